"""Save a state dict with flashtensors and with safetensors, load it back with both, and
see where flashtensors stands on this machine.

Run: python examples/quickstart.py [--gb 1.0] [--runs 7] [--dir DIR] [--keep]

1. The main job: a ~1 GB synthetic state dict saved with ``flash.save_dict`` and with
   safetensors' ``save_file``, loaded back with ``flash.load_dict`` (from the flash
   checkpoint, and from the .safetensors file as it is) and with ``load_file``; every
   tensor of every load is compared with what was saved.
2. Where flashtensors stands here, each row a measured ratio against ``load_file``
   (medians of ``--runs`` loads, the loaders alternating, repeated in this process):
   files in the page cache and files evicted from it (as ``flashtensors bench``'s cold
   runs do, no root needed), for the 1 GB checkpoint and for an MoE-sized one of 20,000
   small tensors. Loads go to ``cuda:0`` when torch sees a GPU, else to the CPU.

Everything is written to a fresh temporary directory (or ``--dir``) and removed at the
end, unless ``--keep`` is given (the path is printed). ``flashtensors bench`` measures the
same with more loaders, sizes and fresh processes.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashtensors import flash
from flashtensors.benchmark import runner, shapes, system
from flashtensors.checkpoint import open_checkpoint

LOADERS = {"flashtensors": "flashtensors", "flashtensors (safetensors)": "flashtensors reading .safetensors"}
BASELINE = "safetensors load_file"


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


def main_job(sd: dict, work: Path, device: torch.device) -> tuple:
    """Saves ``sd`` in both formats, loads it back with each loader and checks every tensor.
    Returns (flash checkpoint directory, safetensors file)."""
    flash_dir, st_file = work / "flash", work / "model.safetensors"
    flash.save_dict(sd, flash_dir)
    save_file(sd, st_file)
    loads = {"flash.load_dict(flash checkpoint)": lambda: flash.load_dict(flash_dir, {"": device}, server=False),
             "flash.load_dict(.safetensors)": lambda: flash.load_dict(st_file, {"": device}, server=False),
             "safetensors load_file": lambda: load_file(st_file, device=str(device))}
    for name, load in loads.items():
        loaded = load()
        assert sorted(loaded) == sorted(sd), f"{name}: names differ"
        assert all(torch.equal(loaded[k].cpu(), v) for k, v in sd.items()), f"{name}: a tensor differs"
        del loaded
    gb = sum(t.nbytes for t in sd.values()) / 1e9
    print(f"saved {len(sd)} tensors ({gb:.2f} GB) with flashtensors and safetensors; loaded to {device} by "
          f"{', '.join(loads)}: every tensor equal")
    return flash_dir, st_file


def measure(label: str, flash_dir: Path, st_files: list, expected: dict, device, runs: int, cold: bool) -> list:
    """Rows (label, mode, {loader: median seconds}) of the benchmark runner's alternating loads."""
    data_files = open_checkpoint(flash_dir).sources + [str(f) for f in st_files]
    results = runner.run(flash_dir, st_files, data_files, device, expected, runs=runs, cold=cold,
                         only={*LOADERS, BASELINE}, fresh=False, log=lambda msg: None)
    failed = [f"{r.loader} ({r.mode}): {r.error}" for r in results if r.error]
    assert not failed, "; ".join(failed)
    rows = []
    for mode in ("warm", "cold") if cold else ("warm",):
        rows.append((label, mode, {r.loader: r.median for r in results if r.mode == mode}))
    return rows


def ratio(baseline: float, seconds: float) -> str:
    """load_file's time over flashtensors': "faster" only above 1x (and beyond 5%, this
    box's usual noise), "slower" below it."""
    r = round(baseline / seconds, 2)
    return f"{r:.2f}x " + ("faster" if r >= 1.05 else "slower" if r <= 0.95 else "even")


def report(rows: list, device, runs: int) -> None:
    where = {"warm": "cached", "cold": "not cached"}
    head = ["checkpoint", "files", "load_file"] + list(LOADERS.values())
    table = [head]
    for label, mode, medians in rows:
        base = medians[BASELINE]
        table.append([label, where[mode], f"{base:.3f} s"]
                     + [f"{medians[n]:.3f} s  {ratio(base, medians[n])}" for n in LOADERS])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    print(f"\nwhere flashtensors stands here: loads to {device}, medians of {runs} alternating loads, "
          "ratios to safetensors' load_file")
    for i, r in enumerate(table):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    notes = ["cached: the files are in the page cache"
             + ("; on a CPU both loaders only map them, little to win" if device.type == "cpu" else ""),
             "not cached: evicted first, as at a machine's first load; flashtensors reads with O_DIRECT "
             "in large pieces",
             "MoE: per-tensor costs (MoE models have 20k-100k tensors); flashtensors parses and plans natively"]
    print("\n".join(notes))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the main state dict (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=7, help="loads per loader and row (default: %(default)s)")
    parser.add_argument("--dir", type=Path, help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the files written, and print where")
    args = parser.parse_args()

    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flashtensors-quickstart-", dir=args.dir))
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        sd = make_state_dict(args.gb)
        flash_dir, st_file = main_job(sd, work, device)
        expected = {name: shapes.digest(t) for name, t in sd.items()}
        label = f"{len(sd)} tensors, {sum(t.nbytes for t in sd.values()) / 1e9:.2f} GB"
        del sd
        cold = system.drop_from_cache(open_checkpoint(flash_dir).sources + [str(st_file)])
        if not cold:
            print(f"(files in {work} cannot be evicted from the page cache here, e.g. on a tmpfs: "
                  "no rows for uncached files; --dir picks a directory on a disk)")
        rows = measure(label, flash_dir, [st_file], expected, device, args.runs, cold)

        moe = work / "moe"  # 20,000 tensors of 8 KiB: the per-tensor costs of a Qwen3-30B-A3B
        expected = shapes.make_checkpoint(shapes.moe_shapes(20000, 8), moe, log=lambda msg: None)
        rows += measure("20000 tensors of 8 KiB (MoE)", moe / "flash", sorted((moe / "safetensors").glob("*")),
                        expected, device, args.runs, cold)
        report(rows, device, args.runs)
    finally:
        if args.keep:
            print(f"\nkept the checkpoints in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
