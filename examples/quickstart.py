"""Save a ~1 GB synthetic state dict with flashtensors and safetensors, then load both.

Run: python examples/quickstart.py [--gb 1.0] [--dir /tmp/flash-quickstart]

Each load is timed until every page of every tensor has been touched (a lazily mapped
file is not loaded until then), median of 3 runs, alternating, files in the page cache.
"""

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashtensors import flash


def make_state_dict(gb: float) -> dict:
    """Qwen-like bf16 tensors adding up to about `gb` gigabytes."""
    hidden, layers = 2048, max(1, round(gb * 1e9 / (2 * 12 * 2048 * 2048)))
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        for name, shape in [("self_attn.qkv_proj", (3 * hidden, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_up_proj", (8 * hidden, hidden))]:
            sd[f"model.layers.{i}.{name}.weight"] = torch.randn(shape, generator=gen).to(torch.bfloat16)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return sd


def touch(sd: dict) -> int:
    """Reads one byte of every 4 KiB page of every tensor."""
    return sum(int(t.reshape(-1).view(torch.uint8)[::4096].sum()) for t in sd.values())


def timed(fn) -> float:
    start = time.perf_counter()
    touch(fn())
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/flash-quickstart"))
    args = parser.parse_args()

    sd = make_state_dict(args.gb)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    shutil.rmtree(args.dir, ignore_errors=True)
    flash_dir, st_file = args.dir / "flash", args.dir / "model.safetensors"
    flash.save_dict(sd, flash_dir)
    save_file(sd, st_file)

    loaded = flash.load_dict(flash_dir, {"": "cpu"})
    assert all(torch.equal(loaded[k], v) for k, v in sd.items()), "round trip differs"
    del loaded

    flash_times, st_times = [], []
    for _ in range(3):
        flash_times.append(timed(lambda: flash.load_dict(flash_dir, {"": "cpu"})))
        st_times.append(timed(lambda: load_file(st_file, device="cpu")))
    f, s = statistics.median(flash_times), statistics.median(st_times)
    print(f"{len(sd)} tensors, {nbytes / 1e9:.2f} GB, loaded to cpu (files cached):")
    print(f"  flashtensors            {f:7.3f} s  {nbytes / 1e9 / f:6.1f} GB/s")
    print(f"  safetensors load_file   {s:7.3f} s  {nbytes / 1e9 / s:6.1f} GB/s")
    print(f"  speedup                 {s / f:7.2f}x")


if __name__ == "__main__":
    main()
