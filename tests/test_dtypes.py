"""Every dtype that safetensors' format and torch both have loads from safetensors files,
equal to safetensors.torch.load_file (the ROCm fp8 types F8_E4M3FNUZ and F8_E5M2FNUZ,
and F4, which torch holds two to a byte, included), and converts to the flash format and
back; a dtype torch lacks is refused, naming the dtype, the tensor and the file.

"Both have" is decided by the installed safetensors itself: every torch dtype its
save_file can write.
"""

import json
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from flashtensors import FlashFormatError, flash
from flashtensors.loader import load


def _writable_by_safetensors() -> list:
    dtypes, seen = [], set()
    for name in sorted(dir(torch)):
        dtype = getattr(torch, name)
        if not isinstance(dtype, torch.dtype) or dtype in seen:
            continue
        seen.add(dtype)
        try:
            save({"x": torch.zeros(16, dtype=torch.uint8).view(dtype)})
        except Exception:  # noqa: BLE001 - any refusal means safetensors cannot write it
            continue
        dtypes.append(dtype)
    return dtypes


WRITABLE = _writable_by_safetensors()


def _random_bytes_as(dtype, shape, seed: int):
    gen = torch.Generator().manual_seed(seed)
    count = 1
    for d in shape:
        count *= d
    raw = torch.randint(0, 256, (count * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def test_safetensors_writes_the_types_this_test_is_about():
    names = {str(d).removeprefix("torch.") for d in WRITABLE}
    assert {"float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3fn", "float8_e5m2", "bfloat16"} <= names, names


@pytest.mark.parametrize("dtype", WRITABLE, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("io", ["auto", "mmap", "buffered", "direct"])
def test_a_safetensors_dtype_equals_load_file(tmp_path, dtype, io):
    tensors = {"odd": _random_bytes_as(dtype, (3, 6), 1), "scalar_or_row": _random_bytes_as(dtype, (1, 2), 2),
               "empty": _random_bytes_as(dtype, (0, 4), 0)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    want = load_file(str(path))
    got = load(path, io=io)
    assert list(got) == list(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        assert _bits(got[name]) == _bits(w), name


@pytest.mark.parametrize("dtype", WRITABLE, ids=lambda d: str(d).removeprefix("torch."))
def test_a_safetensors_dtype_converts_to_flash_and_back(tmp_path, dtype):
    path = tmp_path / "model.safetensors"
    save_file({"w": _random_bytes_as(dtype, (5, 4), 3)}, str(path))
    want = load_file(str(path))
    flash.save_dict(flash.load_dict(path), tmp_path / "ckpt")
    got = flash.load_dict(tmp_path / "ckpt")
    assert got["w"].dtype == dtype and got["w"].shape == want["w"].shape
    assert _bits(got["w"]) == _bits(want["w"])


def _write_safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2", "F99"])
def test_a_dtype_torch_lacks_names_the_dtype_the_tensor_and_the_file(tmp_path, dtype):
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {"ok": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                              "fp6": {"dtype": dtype, "shape": [4], "data_offsets": [2, 5]}}, bytes(5))
    with pytest.raises(FlashFormatError) as e:
        flash.load_dict(path)
    assert f"dtype '{dtype}'" in str(e.value) and "'fp6'" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("shape", [[3], [], [2, 5]])
def test_f4_needs_an_even_last_dimension_as_torch_packs_pairs(tmp_path, shape):
    path = tmp_path / "model.safetensors"
    count = 1
    for d in shape:
        count *= d
    _write_safetensors(path, {"fp4": {"dtype": "F4", "shape": shape, "data_offsets": [0, (count + 1) // 2]}},
                       bytes((count + 1) // 2))
    with pytest.raises(FlashFormatError, match=r"dtype 'F4' needs a last dimension divisible by 2.*'fp4'"):
        flash.load_dict(path)
    with pytest.raises(SafetensorError):  # as safetensors refuses them
        load_file(str(path))


def test_a_flash_dtype_this_torch_lacks_is_named_with_its_tensor(tmp_path, monkeypatch):
    """A torch without a dtype the checkpoint holds (an older release) cannot be installed
    beside this one: it is stood in for by taking the dtype away from the loader."""
    from flashtensors import loader

    flash.save_dict({"x": torch.zeros(4, dtype=torch.float8_e5m2fnuz), "y": torch.ones(2)}, tmp_path / "m")
    real = loader.torch_dtype

    def lacking(name):
        if name == "float8_e5m2fnuz":
            raise FlashFormatError(f"dtype {name!r} is not available in torch {torch.__version__}")
        return real(name)

    monkeypatch.setattr(loader, "torch_dtype", lacking)
    monkeypatch.setattr(loader, "_dlpack_dtypes", lambda: [None] * 64)  # everything handed over as bytes
    with pytest.raises(FlashFormatError, match="tensor 'x': dtype 'float8_e5m2fnuz' is not available"):
        flash.load_dict(tmp_path / "m")
