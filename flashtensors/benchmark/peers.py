"""The loaders measured side by side. Each returns {name: tensor} on the device and is
timed until the data is really there (CUDA synchronized, or every host page mapped in: the pages
not yet in the page tables are read once)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable


@dataclass
class Loader:
    name: str
    load: Callable  # (flash_dir, safetensors_files, device, names) -> (tensors, keepalive)
    available: Callable[[object], str]  # device -> "" if usable, else why not
    module: str  # imported before the clock starts in a fresh process


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _flash(flash_dir, files, device, names):
    from .. import flash

    return flash.load_dict(flash_dir, {"": device}, server=False), None


def _flash_safetensors(flash_dir, files, device, names):
    """flashtensors reading the safetensors files as they are (no conversion)."""
    from pathlib import Path

    from .. import flash

    path = files[0] if len(files) == 1 else Path(files[0]).parent  # the benchmark's shards are alone there
    return flash.load_dict(path, {"": device}, server=False), None


def _cached(flash_dir, files, device, names):
    from .. import flash

    return flash.load_dict(flash_dir, {"": device}, server=_daemon_socket(flash_dir)), None


_DAEMON: dict = {}


def _daemon_socket(flash_dir) -> str:
    """$FLASHTENSORS_SERVER if set, else a daemon of our own on a temporary socket, started
    on first use (its first load fills it; the median of 3+ runs is a cache hit) and
    stopped when the benchmark exits."""
    import os

    if os.environ.get("FLASHTENSORS_SERVER"):
        return os.environ["FLASHTENSORS_SERVER"]
    if "socket" not in _DAEMON:
        import atexit
        import shutil
        import tempfile

        from .. import flash
        from ..daemon import spawn

        directory = tempfile.mkdtemp(prefix="flashtensors-bench-")
        _DAEMON["socket"] = os.path.join(directory, "cache.sock")
        memory = max(1 << 30, 2 * flash.read_index(flash_dir).total_bytes)
        proc = spawn.start(_DAEMON["socket"], memory)
        atexit.register(lambda: (spawn.stop(proc), shutil.rmtree(directory, ignore_errors=True)))
    return _DAEMON["socket"]


def _cpu_only(device) -> str:
    return "the cache daemon serves CPU targets only" if device.type != "cpu" else ""


def _safetensors(flash_dir, files, device, names):
    from safetensors.torch import load_file

    out = {}
    for f in files:
        out.update(load_file(f, device=str(device)))
    return out, None


def _instanttensor(flash_dir, files, device, names):
    from instanttensor import safe_open

    out = {}
    with safe_open([str(f) for f in files], framework="pt", device=device.index) as f:
        for name, tensor in f.tensors():
            out[name] = tensor
    return out, None


def _fastsafetensors(flash_dir, files, device, names):
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup

    loader = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
    loader.add_filenames({0: [str(f) for f in files]})
    buffers = loader.copy_files_to_device()
    out = {name: buffers.get_tensor(name) for name in names}
    return out, (buffers, loader)  # the tensors are views into these


def _runai(flash_dir, files, device, names):
    from runai_model_streamer import SafetensorsStreamer

    out = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files([str(f) for f in files])
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device, copy=True)  # the streamer reuses its buffer
    return out, None


def _any_device(device) -> str:
    return ""


def _needs(module: str, cuda_only: bool = False):
    def check(device) -> str:
        if not _installed(module):
            return f"{module} is not installed"
        if cuda_only and device.type != "cuda":
            return f"{module} loads to CUDA devices only"
        return ""
    return check


LOADERS = [
    Loader("flashtensors", _flash, _any_device, "flashtensors.flash"),
    Loader("flashtensors (safetensors)", _flash_safetensors, _any_device, "flashtensors.flash"),
    Loader("cached (daemon)", _cached, _cpu_only, "flashtensors.flash"),
    Loader("safetensors load_file", _safetensors, _any_device, "safetensors.torch"),
    Loader("instanttensor", _instanttensor, _needs("instanttensor", cuda_only=True), "instanttensor"),
    Loader("fastsafetensors", _fastsafetensors, _needs("fastsafetensors"), "fastsafetensors"),
    Loader("runai-model-streamer", _runai, _needs("runai_model_streamer"), "runai_model_streamer"),
]
