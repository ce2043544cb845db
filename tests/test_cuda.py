"""Real CUDA loads. Skipped without a GPU; run on the device machine."""

import os

import pytest
import torch

from flashtensors import flash
from flashtensors.errors import FlashDeviceError

from helpers import assert_same

pytestmark = pytest.mark.gpu


def test_seed_example_on_gpu(ckpt):
    class SimpleModel(torch.nn.Module):
        def __init__(self, size=(3, 3)):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(*size))

        def forward(self, x):
            return x @ self.weight

    model = SimpleModel()
    flash.save_dict(model.state_dict(), ckpt)
    new_state_dict = flash.load_dict(ckpt, {"": 0})
    assert new_state_dict["weight"].device == torch.device("cuda", 0)
    assert torch.equal(new_state_dict["weight"].cpu(), model.weight.detach())


def test_gpu_tensors_save_without_moving_them(ckpt):
    sd = {"a": torch.randn(1000, device="cuda"), "b": torch.randn(3, device="cuda").to(torch.bfloat16)}
    flash.save_dict(sd, ckpt)
    assert_same(flash.load_dict(ckpt, 0), sd)


def test_mixed_map(ckpt):
    sd = {"a.w": torch.randn(100, 100), "b.w": torch.randn(50), "a.tied": None}
    sd["a.tied"] = sd["a.w"]
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt, {"a": 0, "b": "cpu"})
    assert out["a.w"].is_cuda and not out["b.w"].is_cuda
    assert out["a.w"].data_ptr() == out["a.tied"].data_ptr()
    assert_same(out, sd)


def test_load_into_gpu_parameters(ckpt):
    model = torch.nn.Linear(300, 7).cuda()
    sd = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    flash.save_dict(sd, ckpt)
    flash.load_into(ckpt, {n: p.data for n, p in model.named_parameters()})
    assert_same(model.state_dict(), sd)


def test_large_round_trip_with_checksums(ckpt):
    """GiB as benchmarks/gpu_check.sh sizes it for its stage's disk and time (default 2),
    within what the GPU has free for the tensors and their loaded copy."""
    free, _ = torch.cuda.mem_get_info()
    gib = min(int(os.environ.get("FLASH_GPU_ROUNDTRIP_GIB", "2")), max(1, free // (3 * 2**30)))
    gen = torch.Generator(device="cuda").manual_seed(0)
    sd = {f"layer.{i}": torch.randn(256 << 20, device="cuda", generator=gen, dtype=torch.float32)
          .to(torch.bfloat16) for i in range(gib * 2)}
    flash.save_dict(sd, ckpt)
    assert flash.verify(ckpt) == len(sd)
    out = flash.load_dict(ckpt, {"": 0})
    for name, t in sd.items():
        assert torch.equal(out[name], t), name


def test_load_that_cannot_fit_fails_before_reading(ckpt):
    import json
    import os

    flash.save_dict({"w": torch.zeros(1)}, ckpt)
    _, total = torch.cuda.mem_get_info()
    size = -(-(total + (1 << 30)) // 4096) * 4096
    doc = json.loads((ckpt / "flash_index.json").read_text())
    os.truncate(ckpt / doc["files"][0]["name"], size)  # sparse: costs no disk
    doc["files"][0]["size"] = size
    doc["tensors"][0].update(shape=[size], dtype="uint8", length=size)
    (ckpt / "flash_index.json").write_text(json.dumps(doc))
    with pytest.raises(FlashDeviceError, match="GiB is free"):
        flash.load_dict(ckpt, 0)


def test_bad_gpu_index(ckpt):
    flash.save_dict({"w": torch.zeros(1)}, ckpt)
    with pytest.raises(FlashDeviceError, match="CUDA device"):
        flash.load_dict(ckpt, torch.cuda.device_count())


def test_unsorted_safetensors_land_aligned_and_kernels_run(tmp_path):
    """Tensors at odd file offsets (fp32 at 1 mod 4, float64 at 5 mod 8): each lands at an
    address its dtype allows, so kernels on them run (a misaligned one faults, and the
    error ruins the context), with the file's values."""
    from async_cuda_torch import write_unsorted_safetensors

    tensors = {"u": torch.arange(3, dtype=torch.uint8), "f": torch.randn(1001), "h": torch.randn(77).bfloat16(),
               "d": torch.randn(513, dtype=torch.float64), "s": torch.arange(9, dtype=torch.int16),
               "l": torch.arange(33, dtype=torch.int64)}
    path = tmp_path / "model.safetensors"
    write_unsorted_safetensors(path, tensors, header_pad=1)
    out = flash.load_dict(path, 0)
    for name, want in tensors.items():
        got = out[name]
        assert got.data_ptr() % want.element_size() == 0, name
        assert torch.equal((got * 1).cpu(), want * 1), name  # a kernel reading the tensor
    torch.cuda.synchronize()


def test_load_into_waits_for_other_streams(ckpt):
    """A parameter still being written on another stream when load_into starts ends up with
    the checkpoint's values, visible to that stream once load_into returns."""
    sd = {"w": torch.randn(1 << 20)}
    flash.save_dict(sd, ckpt)
    target = torch.zeros(1 << 20, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of queued work before the write
        target.fill_(7.0)
    flash.load_into(ckpt, {"w": target})
    with torch.cuda.stream(side):
        seen = target.clone()  # on the other stream, after the load
    side.synchronize()
    assert torch.equal(seen.cpu(), sd["w"])
