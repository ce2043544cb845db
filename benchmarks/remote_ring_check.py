"""Remote and local loads to cuda:0 taking turns in one process, through the one pinned ring:
every load's tensors checked (``verify=True``), its time, and the ring's pinned bytes after it
(constant after the first load: no re-pinning when remote and local pieces alternate).

    python3 benchmarks/remote_ring_check.py --size 2 --dir /tmp/ring --json ring.json   # gpu_check.sh remote

The checkpoint is served by the range-capable HTTP server of the tests (tests/support/remote_servers.py)
on loopback, so this runs where nginx is not installed. One JSON line per load is appended to
``--json`` as it goes (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, default=2.0, help="GB of bf16 tensors")
    p.add_argument("--dir", type=Path, required=True, help="scratch directory (removed at the end)")
    p.add_argument("--json", type=Path, required=True, help="file to append one JSON line per load to")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda:0", help="where to load (cpu: a dry run of this script)")
    args = p.parse_args()

    import torch

    from flashtensors import _native, flash
    from flashtensors.benchmark.shapes import make_checkpoint, shape_for_size, tensor_shapes

    from remote_servers import FaultServer

    torch.empty(1, device=args.device)  # CUDA initialised outside the timings
    try:
        make_checkpoint(tensor_shapes(shape_for_size(args.size)), args.dir, log=print)
        shutil.rmtree(args.dir / "safetensors")  # only the flash copy is served
        with FaultServer(args.dir) as server:
            sources = {"local": str(args.dir / "flash"), "remote": f"{server.url}/flash"}
            for n in range(args.rounds):
                for kind, location in sources.items():
                    start = time.perf_counter()
                    out = flash.load_dict(location, args.device, verify=True)
                    seconds = time.perf_counter() - start
                    nbytes = sum(t.nbytes for t in out.values())
                    row = {"round": n, "source": kind, "seconds": round(seconds, 3),
                           "GBps": round(nbytes / seconds / 1e9, 2), "pinned_bytes": _native.module().pinned_bytes()}
                    print(json.dumps(row), flush=True)
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    del out
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
