"""`flashtensors bench`: flashtensors against safetensors and the other loaders here."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

from .args import positive_float, positive_int

EXAMPLE = """examples:
  flashtensors bench --model 8b --device cuda:0         # a Qwen3-8B-shaped checkpoint on GPU 0
  flashtensors bench --size 1 --device cpu --runs 5     # about 1 GB, loaded to the CPU
  flashtensors bench --path /models/qwen --json out.json
  flashtensors bench --tensors 20000 --device cpu --no-cold --runs 7   # MoE-sized: per-tensor costs
  flashtensors bench --path s3://bucket/models/qwen --device cpu    # a remote checkpoint vs curl
  flashtensors bench --size 1 --nginx --device cpu      # served by a loopback nginx, vs curl
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time flashtensors against safetensors and other loaders",
        description="Make (or take) a checkpoint in flash and safetensors form, load it with each "
                    "loader installed, warm (files cached) and cold (evicted from the page cache), "
                    "check every tensor, and print seconds, GB/s and the speedup over safetensors.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", choices=["0.6b", "4b", "8b", "14b", "32b"], help="a Qwen3-like shape")
    what.add_argument("--size", type=positive_float, help="about this many GB of bf16 tensors")
    what.add_argument("--path", help="an existing flash checkpoint or safetensors file/directory, or its "
                                     "http(s):// or s3:// URL (then: streaming vs curl vs download-then-load)")
    what.add_argument("--tensors", type=positive_int, metavar="N",
                      help="an MoE-style checkpoint of N small tensors (per-tensor costs; see --tensor-kb)")
    p.add_argument("--tensor-kb", type=positive_int, default=64, metavar="KIB",
                   help="size of each tensor with --tensors (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: cuda:0 if there is a GPU)")
    p.add_argument("--runs", type=positive_int, default=3, help="runs per loader and mode; the median is reported")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (page cache evicted) runs")
    p.add_argument("--in-process", action="store_true",
                   help="time repeated loads in this process instead of one load per fresh process "
                        "(the default, as a serving replica loads: pinning, opening, first faults included)")
    p.add_argument("--loaders", help="comma-separated loader names to run (default: all installed)")
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "flashtensors-bench"),
                   help="where generated checkpoints are kept and reused (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--nginx", action="store_true",
                   help="serve the checkpoint with a throwaway nginx on loopback and time streaming it "
                        "against curl and download-then-load")
    p.add_argument("--threads", type=positive_int, default=None, help="I/O threads (default: the loader's)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..benchmark import system
    from ..benchmark.prepare import prepare
    from ..benchmark.runner import run as run_loaders
    from ..benchmark.runner import table
    from ..device_map import normalize_device_map
    from ..format import data_file_paths, read_index

    if not (args.model or args.size or args.path or args.tensors):
        args.size = 1.0
    device = normalize_device_map(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))[""]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    from ..locations import is_remote

    if args.path and is_remote(args.path):
        return _remote(args, args.path, device, log)

    flash_dir, st_files, expected = prepare(args, log=log)
    if args.nginx:
        from ..benchmark.nginx import Nginx

        with Nginx(os.path.dirname(os.path.abspath(flash_dir))) as server:
            return _remote(args, f"{server.url}/{os.path.basename(os.path.abspath(flash_dir))}", device, log)
    flash_files = [str(p) for p in data_file_paths(flash_dir, read_index(flash_dir))]
    data_files = flash_files + [str(f) for f in st_files]
    nbytes = read_index(flash_dir).total_bytes
    if device.type == "cuda":
        torch.empty(1, device=device)  # CUDA init stays out of every timing

    machine = system.describe(device)
    log("measuring the machine's ceilings")
    ceilings = {"odirect_read_GBps": system.odirect_read_rate(flash_files)}
    if device.type == "cuda":
        ceilings["pinned_h2d_GBps"] = system.pinned_h2d_rate(device)
    only = set(args.loaders.split(",")) if args.loaders else None
    results = run_loaders(flash_dir, st_files, data_files, device, expected, runs=args.runs,
                          cold=not args.no_cold, only=only, fresh=not args.in_process, log=log)

    print(f"machine: {machine}")
    how = "repeated in one process" if args.in_process else "each in a fresh process"
    print(f"checkpoint: {len(expected)} tensors, {nbytes / 1e9:.2f} GB, to {device}; "
          f"median of {args.runs} runs, {how}")
    print("ceilings: " + ", ".join(f"{k.replace('_GBps', '')} {v:.1f} GB/s" for k, v in ceilings.items() if v)
          + ("" if ceilings["odirect_read_GBps"] else " (O_DIRECT refused by this filesystem)"))
    print(table(results, nbytes))
    for r in results:
        if r.error:
            print(f"  {r.loader} ({r.mode}): {r.error}")
    if args.json:
        doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine,
               "device": str(device), "tensors": len(expected), "bytes": nbytes, "runs": args.runs,
               "fresh_process": not args.in_process,
               "ceilings": ceilings,
               "results": [{"loader": r.loader, "mode": r.mode, "seconds": r.seconds, "median": r.median,
                            "GBps": nbytes / 1e9 / r.median if r.median else None, "error": r.error}
                           for r in results]}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    flash_errors = [r for r in results if r.loader == "flashtensors" and r.error]
    return 1 if flash_errors else 0


def _remote(args, url: str, device, log) -> int:
    from ..benchmark import system
    from ..benchmark.remote import bench_url, table

    result = bench_url(url, device, runs=args.runs, threads=args.threads, log=log)
    result["system"] = system.describe(device)
    log(result["system"])
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0
