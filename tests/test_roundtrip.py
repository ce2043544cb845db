"""Round trips of every supported dtype and tensor layout through real files."""

import pytest
import torch

from flashtensors import flash
from flashtensors.formats.index import DTYPE_SIZES
from flashtensors.writer import CheckpointWriter

from helpers import assert_same


def _random(dtype, shape, gen):
    if dtype == getattr(torch, "float4_e2m1fn_x2", None):  # no conversions: random bytes
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).view(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=gen)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


def _torch_dtypes():
    return [getattr(torch, n) for n in DTYPE_SIZES if isinstance(getattr(torch, n, None), torch.dtype)]


def test_every_dtype(ckpt):
    gen = torch.Generator().manual_seed(0)
    sd = {f"t.{dt}": _random(dt, (3, 5), gen) for dt in _torch_dtypes()}
    assert len(sd) >= 18
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt), sd)


def test_seed_example_on_cpu(ckpt):
    class SimpleModel(torch.nn.Module):
        def __init__(self, size=(3, 3)):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(*size))

    model = SimpleModel()
    flash.save_dict(model.state_dict(), ckpt)
    new_state_dict = flash.load_dict(ckpt, {"": "cpu"})
    assert torch.equal(new_state_dict["weight"], model.weight.detach())


def test_tied_tensors_come_back_sharing_storage(ckpt):
    emb = torch.randn(10, 4)
    sd = {"embed.weight": emb, "lm_head.weight": emb, "other": torch.randn(2)}
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt)
    assert_same(out, sd)
    assert out["embed.weight"].data_ptr() == out["lm_head.weight"].data_ptr()
    out["embed.weight"][0, 0] = 42.0
    assert out["lm_head.weight"][0, 0] == 42.0
    # Unrelated tensors get storages of their own, as they had when saved.
    assert out["other"].untyped_storage().data_ptr() != out["embed.weight"].untyped_storage().data_ptr()
    assert out["embed.weight"].untyped_storage().nbytes() < 8192


def test_views_of_one_storage_are_stored_once(ckpt):
    base = torch.randn(64, 32)
    sd = {"base": base, "t": base.t(), "rows": base[8:16], "col": base[:, 3], "flat": base.view(-1)[5:9]}
    flash.save_dict(sd, ckpt)
    index = flash.read_index(ckpt)
    assert index.total_bytes == 8192  # 64*32*4 bytes = 8192, written once
    out = flash.load_dict(ckpt)
    assert_same(out, sd)
    ptr = out["base"].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == ptr for t in out.values())
    assert out["rows"].data_ptr() - out["base"].data_ptr() == 8 * 32 * 4


def test_non_contiguous_and_offset_views_alone(ckpt):
    big = torch.randn(100, 100)
    sd = {"strided": torch.randn(6, 8)[:, ::3], "transposed": torch.randn(4, 7).t(),
          "slice": big[50:52], "expanded": torch.randn(3, 1).expand(3, 4)}
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt)
    assert_same(out, sd)
    # A lone slice stores its own bytes, not the whole storage it came from.
    assert flash.read_index(ckpt).total_bytes == 4 * 4096  # one page each; big[] is 40 KB


def test_zero_dim_and_empty(ckpt):
    sd = {"scalar": torch.tensor(2.5), "int_scalar": torch.tensor(7, dtype=torch.int64),
          "empty": torch.empty(0), "empty2d": torch.empty(3, 0, dtype=torch.bfloat16)}
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt), sd)


def test_ten_thousand_small_tensors(ckpt):
    sd = {f"layer.{i}.w": torch.full((i % 7 + 1,), float(i)) for i in range(10_000)}
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt), sd)


def test_tensor_over_256_mib(ckpt):
    big = torch.randint(0, 255, (257 << 20,), dtype=torch.uint8)
    sd = {"big": big, "small": torch.randn(3)}
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt)
    assert_same(out, sd)
    assert flash.verify(ckpt) == 2


def test_unicode_and_odd_names(ckpt):
    names = ["模型.权重", "emoji.🚀", "with space", "", "a/b\\c", "dots..", "\"quoted\"", "x" * 500]
    sd = {n: torch.randn(2) for n in names}
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt), sd)


def test_data_files_roll_at_the_size_cap(ckpt):
    sd = {f"w{i}": torch.randn(4096) for i in range(10)}  # 16 KiB each
    with CheckpointWriter(ckpt, max_file_size=40_000) as w:
        w.write(sd)
    index = flash.read_index(ckpt)
    assert len(index.files) == 5
    assert all(f.size % 4096 == 0 for f in index.files)
    assert_same(flash.load_dict(ckpt), sd)


def test_streaming_writer_across_calls_and_metadata(ckpt):
    parts = [{f"p{k}.{i}": torch.randn(5) for i in range(3)} for k in range(3)]
    with CheckpointWriter(ckpt, metadata={"source": "test"}) as w:
        for part in parts:
            w.write(part)
    expected = {k: v for part in parts for k, v in part.items()}
    assert_same(flash.load_dict(ckpt), expected)
    assert flash.read_index(ckpt).metadata == {"source": "test"}


def test_every_tensor_starts_aligned(ckpt):
    sd = {f"w{i}": torch.randn(i + 1) for i in range(20)}
    flash.save_dict(sd, ckpt)
    assert all(t.offset % 4096 == 0 for t in flash.read_index(ckpt).tensors.values())


@pytest.mark.parametrize("io", ["buffered", "direct", "auto", "mmap"])
def test_io_modes_read_the_same_bytes(ckpt, io):
    from flashtensors.loader import load

    sd = {"a": torch.randn(300_000), "b": torch.randn(17), "c": torch.randn(5000, 3)}
    flash.save_dict(sd, ckpt)
    assert_same(load(ckpt, "cpu", io=io, threads=3), sd)


def test_load_on_tmpfs_where_o_direct_is_refused(tmp_path):
    import os
    import tempfile

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    from flashtensors.loader import load

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        sd = {"a": torch.randn(100_000)}
        flash.save_dict(sd, d + "/ck")
        assert_same(load(d + "/ck", "cpu", io="direct"), sd)


def test_verify_then_load(ckpt):
    sd = {"a": torch.randn(10)}
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt, verify=True), sd)


def test_mapped_tensors_are_copy_on_write(ckpt):
    from flashtensors.loader import load

    sd = {"a": torch.zeros(5000), "b": torch.ones(10)}
    flash.save_dict(sd, ckpt)
    out = load(ckpt, "cpu", io="mmap")
    out["a"] += 1
    out["b"].zero_()
    assert_same(flash.load_dict(ckpt), sd)
    flash.verify(ckpt)


def test_a_cold_load_leaves_the_files_cached_for_the_next(ckpt):
    import os
    import time

    from flashtensors import _native
    from flashtensors.checkpoint import open_checkpoint

    sd = {"a": torch.randn(4 << 20)}
    flash.save_dict(sd, ckpt)
    (path,) = open_checkpoint(ckpt).sources
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    resident = _native.module().resident_fraction
    if resident(path) > 0.05:
        pytest.skip("this filesystem keeps the file cached (tmpfs?)")
    assert_same(flash.load_dict(ckpt), sd)
    deadline = time.monotonic() + 20
    while resident(path) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident(path) >= 0.99


def test_lazy_conjugate_and_negative_views(ckpt):
    z = torch.randn(4, dtype=torch.complex64)
    sd = {"z": z, "conj": z.conj(), "neg_imag": z.conj().imag, "alone": torch.randn(3, dtype=torch.complex128).conj()}
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt)
    for name, t in sd.items():
        assert torch.equal(out[name], t.resolve_conj().resolve_neg()), name


@pytest.mark.parametrize("threads", [0, -1, 10**6, 2.5, True])
def test_thread_counts_are_checked(ckpt, threads):
    from flashtensors import FlashError

    flash.save_dict({"a": torch.randn(3)}, ckpt)
    for call in (lambda: flash.load_dict(ckpt, threads=threads), lambda: flash.verify(ckpt, threads=threads),
                 lambda: flash.load_into(ckpt, {"a": torch.empty(3)}, threads=threads)):
        with pytest.raises(FlashError, match="threads must be"):
            call()
