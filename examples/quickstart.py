"""Save a ~1 GB synthetic state dict with flashtensors and safetensors, then load both.

Run: python examples/quickstart.py [--gb 1.0] [--dir /tmp/flash-quickstart]

Both loaders load to the same device: ``cuda:0`` when torch sees a GPU, else the CPU.
Each load is timed until its data is really there (CUDA synchronized; on the CPU, every
page of every tensor touched, since a lazily mapped file is not loaded until then),
median of 3 runs, alternating, files in the page cache, no cache daemon.

What to expect: on a CPU-only machine both loaders map the cached files (flashtensors
zero-copy, safetensors through mmap). Neither has bytes to copy, so the times are of the
same order and their ratio says little: below or above 1x by machine and run. flashtensors
wins where there is more to do than map a file: loads to a GPU (pinned buffers, copies
overlapped with reads) and files not in the page cache (large O_DIRECT reads);
``flashtensors bench`` measures both, cold runs included.
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


def settle(sd: dict, device: torch.device) -> None:
    """Waits until the tensors' data is really there: CUDA copies finished, or one byte of
    every 4 KiB page of every tensor read (a lazily mapped file is not loaded until then)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return
    for t in sd.values():
        int(t.reshape(-1).view(torch.uint8)[::4096].sum())


def timed(load, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    sd = load()
    settle(sd, device)
    seconds = time.perf_counter() - start
    del sd
    return seconds


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

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    load_flash = lambda: flash.load_dict(flash_dir, {"": device}, server=False)
    load_st = lambda: load_file(st_file, device=str(device))

    for name, load in (("flashtensors", load_flash), ("safetensors", load_st)):  # also a warm-up of each
        loaded = load()
        assert all(torch.equal(loaded[k].cpu(), v) for k, v in sd.items()), f"{name}: round trip differs"
        del loaded

    flash_times, st_times = [], []
    for _ in range(3):
        flash_times.append(timed(load_flash, device))
        st_times.append(timed(load_st, device))
    f, s = statistics.median(flash_times), statistics.median(st_times)
    print(f"{len(sd)} tensors, {nbytes / 1e9:.2f} GB, loaded to {device} (files cached):")
    print(f"  flashtensors            {f:7.3f} s  {nbytes / 1e9 / f:6.1f} GB/s")
    print(f"  safetensors load_file   {s:7.3f} s  {nbytes / 1e9 / s:6.1f} GB/s")
    print(f"  speedup                 {s / f:7.2f}x")
    if device.type == "cpu":
        print("No GPU here: both loaders only map the cached files, so expect times of the same\n"
              "order and a ratio that says little (below or above 1x by machine and run).\n"
              "flashtensors' gains are in loads to a GPU, which this script compares when torch\n"
              "sees one, and from files not in the page cache (`flashtensors bench`, cold runs).")


if __name__ == "__main__":
    main()
