"""`flashtensors bench` with a URL source: flashtensors streaming a remote checkpoint
against the plain transfer of the same files (``curl -o /dev/null``) and against
download-then-load (curl to a local directory, then a local load), in the same run.

With ``--nginx`` a local checkpoint is served by a throwaway nginx on loopback first,
which measures the engine and not a network.

Example:
    >>> bench_url("http://127.0.0.1:8080/m", "cpu", runs=3)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time

from ..errors import FlashError


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        raise FlashError("the remote benchmark compares with curl, which is not installed")
    return curl


def _transfer(urls: list) -> float:
    """Seconds for curl to fetch ``urls`` one after another on one connection, to /dev/null."""
    args = [_curl(), "-sS", "--fail"]
    for u in urls:
        args += ["-o", "/dev/null", u]
    started = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - started


def _download_then_load(ckpt, device, scratch: str) -> float:
    from .. import flash

    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    started = time.perf_counter()
    for name, raw in ckpt.found.small.items():  # the small files, as fetched
        with open(os.path.join(scratch, name), "wb") as f:
            f.write(raw)
    args = [_curl(), "-sS", "--fail"]
    for name, url in zip(ckpt.names, ckpt.sources):
        args += ["-o", os.path.join(scratch, name), url]
    subprocess.run(args, check=True)
    target = scratch if ckpt.index.kind == "flash" or len(ckpt.names) > 1 else os.path.join(scratch, ckpt.names[0])
    tensors = flash.load_dict(target, {"": device}, server=False)
    _settle(tensors)
    seconds = time.perf_counter() - started
    del tensors
    return seconds


def _stream(url: str, device, threads) -> float:
    from .. import flash

    started = time.perf_counter()
    tensors = flash.load_dict(url, {"": device}, threads=threads)
    _settle(tensors)
    seconds = time.perf_counter() - started
    del tensors
    return seconds


def _settle(tensors: dict) -> None:
    import torch

    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()


def bench_url(url: str, device="cpu", *, runs: int = 3, threads=None, log=print) -> dict:
    """Medians over ``runs`` (interleaved) of: curl of the data files to /dev/null,
    flashtensors streaming ``url`` to ``device``, and download-then-load. Returns
    ``{"bytes", "curl_s", "stream_s", "download_then_load_s", ...}``."""
    from ..checkpoint import open_checkpoint

    ckpt = open_checkpoint(url)
    nbytes = sum(o.size for o in ckpt.objects)
    log(f"{url}: {len(ckpt.names)} data file(s), {nbytes / 1e9:.2f} GB, {ckpt.index.kind} format")
    times = {"curl_s": [], "stream_s": [], "download_then_load_s": []}
    with tempfile.TemporaryDirectory(prefix="flashtensors-dl-", dir=os.environ.get("FLASHTENSORS_BENCH_DIR")) as d:
        _stream(url, device, threads)  # warm-up: connections, the server's page cache
        for _ in range(runs):
            times["curl_s"].append(_transfer(ckpt.sources))
            times["stream_s"].append(_stream(url, device, threads))
            times["download_then_load_s"].append(_download_then_load(ckpt, device, os.path.join(d, "ckpt")))
    out = {"url": url, "device": str(device), "bytes": nbytes, "runs": runs}
    for key, values in times.items():
        out[key] = statistics.median(values)
        out[key.replace("_s", "_all_s")] = values
    return out


def table(result: dict) -> str:
    """The result as a small text table (seconds, GB/s, ratios)."""
    gb = result["bytes"] / 1e9
    rows = [("curl -o /dev/null (transfer only)", result["curl_s"]),
            ("flashtensors load_dict(url)", result["stream_s"]),
            ("curl download, then load_dict(dir)", result["download_then_load_s"])]
    lines = [f"{'':38s} {'seconds':>8s} {'GB/s':>7s}"]
    lines += [f"{name:38s} {s:8.3f} {gb / s:7.2f}" for name, s in rows]
    lines.append(f"streaming reaches {result['curl_s'] / result['stream_s']:.0%} of curl's rate and is "
                 f"{result['download_then_load_s'] / result['stream_s']:.2f}x faster than download-then-load")
    return "\n".join(lines)
