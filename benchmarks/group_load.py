"""Cold loads of one checkpoint by N ranks of a gloo group on this machine: every rank
reading the whole checkpoint (a plain load_dict), against a collective load
(load_dict(..., group=...)) that reads each byte once. Reports, per mode, the median
wall time of the slowest rank and the bytes read from storage by each rank
(read_bytes in /proc/self/io), alternating the modes, with the files evicted from the
page cache before every run.

    python benchmarks/group_load.py --size 1 --ranks 2 --runs 7
    python benchmarks/group_load.py --path /models/Qwen3-0.6B --ranks 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes:")).split()[1])


def _rank(rank, world, rdv, path, collective, out):
    import torch.distributed as dist

    from flashtensors import flash, loader

    loader.CACHE_AFTER_COLD_LOAD = False  # each run must stay cold, and count only its own reads
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        dist.barrier()
        before, start = _read_bytes(), time.perf_counter()
        tensors = flash.load_dict(path, group=dist.group.WORLD if collective else None, server=False)
        for t in tensors.values():  # every page really there
            if t.numel():
                t.reshape(-1)[::1024].sum()
        out.put((rank, time.perf_counter() - start, _read_bytes() - before))
    finally:
        dist.destroy_process_group()


def run_once(path, world: int, collective: bool, scratch: str) -> tuple:
    """(seconds of the slowest rank, bytes read per rank) of one cold load."""
    from flashtensors.benchmark.system import drop_from_cache
    from flashtensors.checkpoint import open_checkpoint

    if not drop_from_cache(open_checkpoint(path).sources):
        print("  warning: the files stayed in the page cache; this run is not cold")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    rdv = os.path.join(scratch, f"rdv-{time.monotonic_ns()}")
    procs = [ctx.Process(target=_rank, args=(r, world, rdv, str(path), collective, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return max(s for _, s, _ in results), [b for _, _, b in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--size", type=float, default=1.0, help="a synthetic bf16 checkpoint of about this many GB")
    what.add_argument("--path", help="an existing checkpoint (flash or safetensors)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "flashtensors-bench"))
    args = ap.parse_args()

    from flashtensors.benchmark.shapes import make_checkpoint, shape_for_size, tensor_shapes
    from flashtensors.checkpoint import open_checkpoint

    if args.path:
        path = Path(args.path)
    else:
        root = Path(args.dir) / f"qwen3-{args.size}gb"
        make_checkpoint(tensor_shapes(shape_for_size(args.size)), root)
        path = root / "flash"
    total = sum(os.path.getsize(f) for f in open_checkpoint(path).sources)
    seconds = {False: [], True: []}
    read = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.runs):
            for collective in (False, True):
                s, b = run_once(path, args.ranks, collective, scratch)
                seconds[collective].append(s)
                read[collective].append(b)
                print(f"  run {i + 1}/{args.runs} {'group' if collective else 'plain'}: {s:.3f} s, "
                      f"read {[f'{x / 1e9:.2f}' for x in b]} GB")
    print(f"checkpoint: {path}, {total / 1e9:.2f} GB; {args.ranks} ranks (gloo) on this machine; "
          f"cold; median of {args.runs}")
    for collective in (False, True):
        per_rank = [statistics.median(r[k] for r in read[collective]) for k in range(args.ranks)]
        print(f"{'group load' if collective else 'every rank reads all':22}  "
              f"{statistics.median(seconds[collective]):.3f} s  read per rank "
              f"{', '.join(f'{b / 1e9:.2f}' for b in per_rank)} GB  (all ranks: {sum(per_rank) / total:.2f}x "
              "the checkpoint)")


if __name__ == "__main__":
    main()
