"""`flashtensors bench`: flashtensors against safetensors and the other loaders here."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile

from .args import positive_float, positive_int

EXAMPLE = """examples:
  flashtensors bench --model 8b --device cuda:0         # a Qwen3-8B-shaped checkpoint on GPU 0
  flashtensors bench --size 1 --device cpu --runs 5     # about 1 GB, loaded to the CPU
  flashtensors bench --path /models/qwen --json out.json
  flashtensors bench --tensors 20000 --device cpu --no-cold --runs 7   # MoE-sized: per-tensor costs
  flashtensors bench --path s3://bucket/models/qwen --device cpu    # a remote checkpoint vs curl
  flashtensors bench --size 1 --nginx --device cpu      # served by a loopback nginx, vs curl and peers
  flashtensors bench --size 1 --nginx --limit-rate 100m --device cpu --runs 5   # and capped as S3 is
  flashtensors bench --hub --device cpu --runs 5        # 1 GiB in 4 shards from a loopback Hub, CDN at 100 MB/s/conn
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time flashtensors against safetensors and other loaders",
        description="Make (or take) a checkpoint in flash and safetensors form, load it with each "
                    "loader installed, warm (files cached) and cold (evicted from the page cache), "
                    "check every tensor, and print seconds, GB/s and the ratio to safetensors' load_file.",
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
    p.add_argument("--loaders", help="comma-separated loader names to run (default: all installed); for remote "
                                     "sources: curl, flashtensors, runai, s5cmd, curl+load")
    p.add_argument("--dir", help="where generated checkpoints are written, kept and reused (default: a new "
                                 "temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory, and print where it is")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--nginx", action="store_true",
                   help="serve the checkpoint with a throwaway nginx on loopback and time streaming it "
                        "against curl and download-then-load")
    p.add_argument("--hub", action="store_true",
                   help="load a model in 4 shards (--size GB, default 1 GiB) by repo ID from a Hugging Face Hub "
                        "on loopback whose CDN (nginx) is capped per connection (--limit-rate, default 100m), "
                        "into an empty Hub cache, against huggingface_hub's snapshot_download then load_file")
    p.add_argument("--limit-rate", metavar="RATE",
                   help="with --nginx: also serve the checkpoint capped at RATE bytes/s per connection "
                        "(nginx limit_rate: 100m = 100 MB/s, about what S3 gives one connection) and "
                        "time every peer against both servers")
    p.add_argument("--connections", type=positive_int, default=None,
                   help="remote sources: requests flashtensors keeps in flight "
                        "(default: $FLASHTENSORS_CONNECTIONS, else 32)")
    p.add_argument("--threads", type=positive_int, default=None, help="I/O threads (default: the loader's)")
    p.set_defaults(func=run)


def run(args) -> int:
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.dir:
        return _run(args, log)
    args.dir = tempfile.mkdtemp(prefix="flashtensors-bench-")
    try:
        return _run(args, log)
    finally:
        if args.keep:
            log(f"kept the checkpoints in {args.dir}")
        else:
            shutil.rmtree(args.dir, ignore_errors=True)


def _run(args, log) -> int:
    import torch

    from ..benchmark import system
    from ..benchmark.prepare import prepare
    from ..benchmark.runner import run as run_loaders
    from ..benchmark.runner import table
    from ..checkpoint import open_checkpoint
    from ..device_map import to_device

    if not (args.model or args.size or args.path or args.tensors or args.hub):
        args.size = 1.0
    device = to_device(args.device, f"--device {args.device}") if args.device else \
        torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    from ..stores import is_remote

    if args.limit_rate and not (args.nginx or args.hub):
        raise SystemExit("flashtensors bench: --limit-rate needs --nginx or --hub")
    if args.hub:
        if args.path or args.model or args.tensors or args.nginx:
            raise SystemExit("flashtensors bench: --hub makes its own model (--size GB); it takes no --path, "
                             "--model, --tensors or --nginx")
        return _hub(args, device, log)
    if args.path and is_remote(args.path):
        from ..benchmark.remote import http_source

        return _remote(args, [http_source(args.path)], device, log)

    flash_dir, st_files, expected = prepare(args, log=log)
    if args.nginx:
        return _nginx(args, flash_dir, st_files, expected, device, log)
    flash_ckpt = open_checkpoint(flash_dir)
    data_files = flash_ckpt.sources + [str(f) for f in st_files]
    nbytes = flash_ckpt.index.total_bytes
    if device.type == "cuda":
        torch.empty(1, device=device)  # CUDA init stays out of every timing

    machine = system.describe(device)
    log("measuring the machine's ceilings")
    ceilings = {"odirect_read_GBps": system.odirect_read_rate(flash_ckpt.sources)}
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


def _nginx(args, flash_dir, st_files, expected, device, log) -> int:
    """Serves the checkpoint's flash and safetensors copies with nginx (and a capped one
    with --limit-rate) and benches the remote peers against each."""
    from contextlib import ExitStack

    from ..benchmark.nginx import Nginx
    from ..benchmark.remote import http_source

    flash_dir = os.path.abspath(flash_dir)
    root = os.path.dirname(flash_dir)  # holds flash/ and, for generated checkpoints, safetensors/
    bucket = os.path.basename(root)
    st_keys = [os.path.relpath(os.path.abspath(f), root) for f in st_files]
    if any(k.startswith("..") for k in st_keys):
        st_keys = []  # the safetensors copy lies outside the served directory: no S3 peers
    caps = [("loopback", None)] + ([(f"capped {args.limit_rate}/conn", args.limit_rate)] if args.limit_rate else [])
    with ExitStack() as stack:
        sources = []
        for label, cap in caps:
            server = stack.enter_context(Nginx(os.path.dirname(root), limit_rate=cap))
            rel = os.path.relpath(flash_dir, os.path.dirname(root))
            sources.append(http_source(f"{server.url}/{rel}", label, endpoint=server.url, expected=expected,
                                       s3_safetensors=[f"s3://{bucket}/{k}" for k in st_keys] or None,
                                       capped=cap is not None))
        return _remote(args, sources, device, log)


def _hub(args, device, log) -> int:
    """Serves a generated model from a loopback Hub (its CDN capped per connection, and the
    same blobs uncapped for curl: the wire) and benches loading it by repo ID."""
    from ..benchmark.hub import BenchHub
    from ..benchmark.nginx import Nginx
    from ..benchmark.prepare import prepare_hub_model
    from ..benchmark.remote import http_source, hub_source

    model, expected = prepare_hub_model(args, log)
    blobs = os.path.join(os.path.dirname(model), "blobs")
    with BenchHub(f"bench/{os.path.basename(os.path.dirname(model))}", model, blobs,
                  limit_rate=args.limit_rate or "100m") as hub, Nginx(blobs) as wire, Nginx(model) as plain:
        nbytes = sum(size for _, size, _ in hub.weight_files())
        # The same shards over plain uncapped HTTP, no Hub and no cache: what streaming costs this machine.
        return _remote(args, [hub_source(hub, wire.url, expected, nbytes),
                              http_source(plain.url, "plain HTTP uncapped, no cache", expected=expected)],
                       device, log)


def _remote(args, sources, device, log) -> int:
    from ..benchmark import system
    from ..benchmark.remote import bench_sources, table

    only = set(args.loaders.split(",")) if args.loaders else None
    for source in sources:
        source["threads"] = args.threads
    result = bench_sources(sources, device, runs=args.runs, connections=args.connections, only=only, log=log)
    result["system"] = system.describe(device)
    first = result["sources"][0]
    result["bytes"] = first["bytes"]
    for key, field in (("curl", "curl_s"), ("flashtensors", "stream_s")):
        if key in first["peers"]:
            result[field] = first["peers"][key]["median"]
    print(f"machine: {result['system']}")
    print(f"checkpoint: {first['bytes'] / 1e9:.2f} GB to {device}; median of {args.runs} runs, each in a fresh "
          "process, peers alternating")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    failed = any(s["peers"].get("flashtensors", {}).get("error") for s in result["sources"])
    return 1 if failed else 0
