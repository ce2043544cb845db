"""Plain safetensors read in place: a file, a Hugging Face directory (sharded or not, the
Hub cache's symlinked snapshots), equal to safetensors.torch.load_file in every respect;
every engine path (mapped, page cache, O_DIRECT); hostile headers refused."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashtensors import FlashError, FlashFormatError, flash
from flashtensors.loader import load

from helpers import assert_same, save_shards

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
          torch.bool, torch.complex64]


def every_kind_of_tensor() -> dict:
    """Every safetensors dtype, odd sizes (so offsets are not aligned), 0-d and empty
    tensors, and one tensor larger than a read piece's alignment."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, dtype in enumerate(DTYPES):
        raw = torch.randint(0, 256, (7 + i * 13,), dtype=torch.uint8, generator=gen)
        size = raw.numel() // dtype.itemsize * dtype.itemsize
        out[f"t.{i}.{str(dtype).removeprefix('torch.')}"] = raw[:size].view(dtype)
    out["scalar"] = torch.tensor(3.5)
    out["empty"] = torch.empty(0, 5, dtype=torch.bfloat16)
    out["big"] = torch.randn(3, 70_001, generator=gen)
    return out


def assert_same_apart(got: dict, want: dict):
    """assert_same, and each tensor on the CPU in a storage of its own."""
    assert_same(got, want, ordered=False)
    assert all(t.device.type == "cpu" for t in got.values())
    storages = [t.untyped_storage().data_ptr() for t in got.values() if t.numel()]
    assert len(storages) == len(set(storages)), "no two tensors may share storage"


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    save_file(every_kind_of_tensor(), str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("io", ["auto", "mmap", "buffered", "direct"])
def test_a_file_equals_load_file_on_every_path(one_file, io):
    got = load(one_file, io=io)
    assert_same_apart(got, load_file(str(one_file)))


def test_load_dict_threads_and_device_map(one_file):
    want = load_file(str(one_file))
    assert_same_apart(flash.load_dict(one_file, {"t": "cpu", "": "cpu"}, threads=1), want)
    with pytest.raises(FlashError, match="not covered"):
        flash.load_dict(one_file, {"t": "cpu"})


def test_the_result_can_be_saved_again(one_file, tmp_path):
    again = tmp_path / "again.safetensors"
    save_file(flash.load_dict(one_file), str(again))  # refuses tensors that share storage
    assert_same_apart(load_file(str(again)), load_file(str(one_file)))


def _sharded_dir(root, tensors: dict, shards: int):
    save_shards(tensors, root, shards, index=True)
    (root / "config.json").write_text("{}")
    return root


def test_a_sharded_hugging_face_directory(tmp_path):
    tensors = every_kind_of_tensor()
    root = _sharded_dir(tmp_path / "hf", tensors, shards=3)
    assert_same_apart(flash.load_dict(root), tensors)
    index = flash.read_index(root)
    assert index.kind == "safetensors" and len(index.files) == 3


def test_a_hub_cache_snapshot_of_symlinks(tmp_path):
    """The Hub cache keeps files in blobs/ and links them from snapshots/<rev>/."""
    tensors = every_kind_of_tensor()
    staging = _sharded_dir(tmp_path / "staging", tensors, shards=2)
    blobs = tmp_path / "models--org--m" / "blobs"
    snapshot = tmp_path / "models--org--m" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(staging.iterdir())):
        blob = blobs / f"{i:040x}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    assert_same_apart(flash.load_dict(snapshot), tensors)


def test_a_directory_with_both_formats_loads_the_flash_checkpoint(tmp_path):
    save_file({"w": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    flash.save_dict({"w": torch.ones(4)}, tmp_path)
    assert torch.equal(flash.load_dict(tmp_path)["w"], torch.ones(4))


def test_load_into_from_safetensors(one_file):
    want = load_file(str(one_file))
    targets = {n: torch.zeros_like(t) for n, t in want.items() if n != "scalar"}
    flash.load_into(one_file, targets)
    assert_same_apart({**targets, "scalar": want["scalar"].clone()}, want)


def test_verify_says_safetensors_have_no_checksums(one_file):
    with pytest.raises(FlashError, match="no checksums"):
        flash.verify(one_file)


def test_info_of_a_safetensors_directory(one_file):
    from flashtensors.cli.info import describe

    summary = describe(one_file.parent)
    assert summary["format"] == "safetensors" and summary["format_version"] is None
    assert {t["name"] for t in summary["tensors"]} == set(load_file(str(one_file)))


def test_nothing_to_load(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FlashFormatError, match="no safetensors weights"):
        flash.load_dict(tmp_path)


# -- hostile and damaged files ------------------------------------------------------------

def _file_with_header(path, header, data: bytes = b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "U8", "shape": [3],
                                                                            "data_offsets": [8, 11]}}


@pytest.mark.parametrize("header, data, message", [
    (b"not json", b"", "not a JSON object"),
    (b"{not json", b"", "not valid JSON"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}} x', bytes(8), "not valid JSON"),
    (b'{"\xff": 1}', b"", "not valid JSON: invalid UTF-8"),
    (b'{"a": 1}', b"", r"entry is not an object.*'a'"),
    (b"[1, 2]", b"", "not a JSON object"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {}}', bytes(8), "duplicate key"),
    ({**GOOD, "a": {**GOOD["a"], "dtype": "F99"}}, bytes(11), r"dtype 'F99' has no torch equivalent.*'a'"),
    ({**GOOD, "a": {**GOOD["a"], "dtype": 7}}, bytes(11), r"invalid dtype.*'a'"),
    ({**GOOD, "b": {**GOOD["b"], "shape": [-3]}}, bytes(11), r"invalid shape.*'b'"),
    ({**GOOD, "b": {**GOOD["b"], "shape": [4]}}, bytes(11), r"do not match shape and dtype.*'b'"),
    ({**GOOD, "b": {**GOOD["b"], "data_offsets": [6, 9]}}, bytes(11), r"overlap.*'b'"),
    ({**GOOD, "b": {**GOOD["b"], "data_offsets": [9, 12]}}, bytes(12), r"gap.*'b'"),
    ({**GOOD, "b": {**GOOD["b"], "data_offsets": [8, 7]}}, bytes(11), r"end before they begin.*'b'"),
    ({**GOOD, "b": {**GOOD["b"], "data_offsets": [8]}}, bytes(11), r"data_offsets.*'b'"),
    (GOOD, bytes(10), r"beyond the end of the file.*'b'"),
    (GOOD, bytes(12), "trailing bytes"),
    ({**GOOD, "b": {**GOOD["b"], "shape": [2**62, 2**62]}}, bytes(11), r"do not match.*'b'"),
    ({**GOOD, "__metadata__": {"k": 1}}, bytes(11), "__metadata__"),
    (b'{"a": {"x": ' + b"[" * 5000, b"", "nested too deeply"),
])
def test_bad_headers_name_the_file_and_the_tensor(tmp_path, header, data, message):
    path = _file_with_header(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FlashFormatError, match=message) as e:
        flash.load_dict(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("length", [10**12, 100_000_001])
def test_header_lengths_beyond_the_file_or_the_limit(tmp_path, length):
    path = _file_with_header(tmp_path / "bad.safetensors", GOOD, bytes(11), length=length)
    with pytest.raises(FlashFormatError, match="header of"):
        flash.load_dict(path)


def test_a_file_shorter_than_the_length_prefix(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(FlashFormatError, match="8-byte"):
        flash.load_dict(tmp_path / "m.safetensors")


def test_a_tensor_in_two_shards(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(FlashFormatError, match="listed twice.*'w'"):
        flash.load_dict(tmp_path)


@pytest.mark.parametrize("weight_map, message", [
    ({"w": "../elsewhere.safetensors"}, "bad file name"),
    ({"w": "missing.safetensors"}, "names missing weight file"),
    ("nope", "not a valid weight index"),
])
def test_a_bad_hugging_face_index(tmp_path, weight_map, message):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FlashFormatError, match=message):
        flash.load_dict(tmp_path)


def test_a_header_padded_with_spaces_loads(tmp_path):
    """safetensors pads headers with spaces to align the data; that is valid."""
    raw = json.dumps(GOOD).encode() + b" " * 5
    path = _file_with_header(tmp_path / "padded.safetensors", raw, struct.pack("<2f", 1.5, -2.0) + b"\x01\x02\x03")
    got = flash.load_dict(path)
    assert got["a"].tolist() == [1.5, -2.0] and got["b"].tolist() == [1, 2, 3]
