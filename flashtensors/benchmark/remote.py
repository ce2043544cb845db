"""`flashtensors bench` with a URL source: flashtensors streaming a remote checkpoint
beside the peers, in the same run, each sample a fresh process, the peers alternating:
curl to /dev/null (the wire, one connection), runai-model-streamer over ``s3://``, s5cmd
download then safetensors ``load_file``, and curl download then ``load_dict(dir)``.
Peers not installed (or not applicable: runai and s5cmd need safetensors on ``s3://``)
are skipped.

With ``--nginx`` a local checkpoint (flash and safetensors copies) is served by a
throwaway nginx on loopback, path-style, so the S3 clients reach it as
``s3://BUCKET/...`` through ``AWS_ENDPOINT_URL``; ``--limit-rate 100m`` serves it a
second time capped at 100 MB/s per connection, as S3 serves each connection, and times
every peer against both servers.

Example:
    >>> bench_sources([http_source("http://127.0.0.1:8080/m")], "cpu", runs=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from .remote_peers import PEERS, curl_binary

# What the S3 clients need to reach a path-style endpoint without real credentials.
S3_CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}


def http_source(url: str, label: str = "remote", *, s3_safetensors=None, endpoint=None, expected=None,
                capped: bool = False) -> dict:
    """What the peers need to read the checkpoint at ``url`` (fetches its index):
    ``label`` names the table's column; ``s3_safetensors`` lists the checkpoint's
    safetensors files as ``s3://`` URLs for runai and s5cmd (at ``endpoint``, if not
    AWS); ``expected`` ({name: crc32c}) checks the first run of each peer; ``capped``:
    the server caps each connection (one-connection downloads are then skipped)."""
    from ..checkpoint import open_checkpoint

    ckpt = open_checkpoint(url)
    if s3_safetensors is None and url.startswith("s3://") and ckpt.index.kind != "flash":
        s3_safetensors = [url.rstrip("/") + "/" + n if not url.endswith(".safetensors") else url
                          for n in ckpt.names]
    return {"label": label, "url": url, "kind": ckpt.index.kind,
            "bytes": sum(o.size for o in ckpt.objects),
            "data_files": list(zip(ckpt.names, ckpt.sources)),
            "index_files": {n: raw.decode() for n, raw in ckpt.found.small.items()},
            "s3_safetensors": s3_safetensors, "endpoint": endpoint, "expected": expected, "capped": capped}


def bench_sources(sources: list, device="cpu", *, runs: int = 5, connections=None, only=None, log=print) -> dict:
    """Medians over ``runs`` of every usable peer on every source (see http_source),
    each sample a fresh process, peers alternating within each round. Returns
    ``{"sources": [{"label", "bytes", "peers": {key: {"name", "seconds", "median",
    "peak_rss", "error"}}}], ...}``."""
    env = dict(os.environ)
    if connections:
        env["FLASHTENSORS_CONNECTIONS"] = str(connections)
    out = {"device": str(device), "runs": runs, "connections": connections, "sources": []}
    with tempfile.TemporaryDirectory(prefix="flashtensors-bench-") as scratch:
        plan = []
        for source in sources:
            peers = {}
            for p in PEERS:
                if only is not None and p.key not in only:
                    continue
                why = p.available(source)
                if why:
                    log(f"  {source['label']}: skipping {p.name}: {why}")
                    continue
                peers[p.key] = {"name": p.name, "seconds": [], "peak_rss": [], "error": ""}
            out["sources"].append({"label": source["label"], "url": source["url"], "bytes": source["bytes"],
                                   "peers": peers})
            plan.append((source, peers))
        for source, peers in plan:  # warm-up: connections, the server's page cache
            _sample(source, "flashtensors" if "flashtensors" in peers else "curl", device, env, scratch, False)
        for i in range(runs):
            for source, peers in plan:
                for key, row in peers.items():
                    if row["error"]:
                        continue
                    seconds, rss, row["error"] = _sample(source, key, device, env, scratch, checked=i == 0)
                    if seconds is not None:
                        row["seconds"].append(seconds)
                        row["peak_rss"].append(rss)
                    log(f"  run {i + 1}/{runs} {source['label']} {row['name']}: "
                        + (row["error"] or f"{seconds:.3f} s"))
    for s in out["sources"]:
        for row in s["peers"].values():
            row["median"] = statistics.median(row["seconds"]) if row["seconds"] and not row["error"] else None
            rss = [r for r in row["peak_rss"] if r]
            row["peak_rss"] = max(rss) if rss else None
    return out


def hub_source(hub, wire_url: str, expected: dict, nbytes: int) -> dict:
    """The source of a model on a BenchHub (benchmark/hub.py): the peers load ``hf://repo``
    with an empty Hub cache each; curl reads the weight files from ``wire_url`` (the same
    blobs, uncapped: the wire)."""
    rate = hub.cdn.limit_rate
    return {"label": f"Hub, CDN {rate + '/conn' if rate else 'uncapped'}", "url": f"hf://{hub.repo_id}",
            "kind": "safetensors", "bytes": nbytes, "index_files": {}, "s3_safetensors": None, "endpoint": None,
            "data_files": [(name, f"{wire_url}/{sha}") for name, _, sha in hub.weight_files()],
            "expected": expected, "capped": True, "hub": True,
            "sizes": {name: size for name, size, _ in hub.weight_files()},
            "env": {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}}


def _sample(source: dict, key: str, device, env: dict, scratch: str, checked: bool):
    """(seconds, peak RSS bytes or None, error) of one fresh-process sample of a peer; a
    Hub source's sample gets an empty Hub cache, removed after it."""
    if not source.get("hub") or key == "curl":
        return _run_sample(source, key, device, env, scratch, checked)
    cache = tempfile.mkdtemp(prefix="hub-cache-", dir=scratch)
    try:
        return _run_sample({**source, "cache_dir": cache}, key, device, env, scratch, checked)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _run_sample(source: dict, key: str, device, env: dict, scratch: str, checked: bool):
    run_env = {**env, **(S3_CLIENT_ENV if source.get("endpoint") else {}), **source.get("env", {})}
    if source.get("endpoint"):
        run_env["AWS_ENDPOINT_URL"] = run_env["AWS_ENDPOINT_URL_S3"] = source["endpoint"]
    if key == "curl":
        args = [curl_binary(), "-sS", "--fail"]
        for _, url in source["data_files"]:
            args += ["-o", "/dev/null", url]
        started = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        return (seconds, None, "") if proc.returncode == 0 else (None, None, f"curl: {proc.stderr.strip()[:160]}")
    spec = os.path.join(scratch, "spec.json")
    with open(spec, "w") as f:
        json.dump({"peer": key, "device": str(device), "source": source,
                   "expected": source.get("expected") if checked else None}, f)
    proc = subprocess.run([sys.executable, "-m", "flashtensors.benchmark.remote_peers", spec], env=run_env,
                          capture_output=True, text=True, timeout=3600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, None, f"worker failed ({proc.returncode}): {tail[:160]}"
    result = json.loads(lines[-1])
    return result["seconds"], result["peak_rss"], result["error"]


def table(result: dict) -> str:
    """The result as a text table (per source: seconds, GB/s, peak RSS) and the ratios
    that matter: flashtensors against the wire (curl on the first, uncapped source) and
    against each peer on the same source."""
    sources = result["sources"]
    names = list(dict.fromkeys(row["name"] for s in sources for row in s["peers"].values()))
    header = ["peer"] + [f"{s['label']} {c}" for s in sources for c in ("s", "GB/s", "peak RSS")]
    rows = [header]
    for name in names:
        line = [name]
        for s in sources:
            row = next((r for r in s["peers"].values() if r["name"] == name), None)
            if row is None or row["median"] is None:
                line += ["error" if row and row["error"] else "-", "", ""]
                continue
            rss = f"{row['peak_rss'] / 2**30:.2f} GiB" if row["peak_rss"] else ""
            line += [f"{row['median']:.3f}", f"{s['bytes'] / 1e9 / row['median']:.2f}", rss]
        rows.append(line)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += _ratios(sources)
    for s in sources:
        for row in s["peers"].values():
            if row["error"]:
                lines.append(f"  {s['label']}: {row['name']}: {row['error']}")
    return "\n".join(lines)


def _ratios(sources: list) -> list:
    def median(s, key):
        row = s["peers"].get(key)
        return row["median"] if row else None

    wire = median(sources[0], "curl")
    out = []
    for s in sources:
        ours = median(s, "flashtensors")
        if not ours:
            continue
        parts = []
        if wire:
            what = "curl's rate" if s is sources[0] else f"the {sources[0]['label']} curl rate"
            parts.append(f"{wire / ours:.0%} of {what}")
        for key, short in (("runai", "runai"), ("s5cmd", "s5cmd-then-load"), ("curl+load", "curl-then-load"),
                           ("hf", "snapshot_download-then-load_file")):
            theirs = median(s, key)
            if theirs:
                parts.append(f"{theirs / ours:.2f}x {short}")
        if parts:
            out.append(f"{s['label']}: streaming reaches " + ", ".join(parts))
    return out
