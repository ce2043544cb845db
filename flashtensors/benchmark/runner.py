"""Runs the loaders side by side, warm and cold, and checks every tensor they load."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import system
from .peers import LOADERS
from .shapes import digest


@dataclass
class Result:
    loader: str
    mode: str  # "warm" or "cold"
    seconds: list = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def settle(tensors: dict, device) -> None:
    """Waits until the tensors' data is really there: CUDA copies finished, or every
    host page read once that is not mapped in yet (a lazily mapped file is not loaded
    until then; memory a loader already filled costs only the page-table check)."""
    import torch

    from .. import _native

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return
    storages = {(s.data_ptr(), s.nbytes()) for s in (t.untyped_storage() for t in tensors.values() if t.numel())}
    _native.module().touch_pages(list(storages))


def check(tensors: dict, expected: dict) -> str:
    """'' when every expected tensor came back with the right bytes, else what is wrong."""
    missing = [n for n in expected if n not in tensors]
    if missing:
        return f"missing {len(missing)} tensors, e.g. {missing[0]}"
    wrong = [n for n, crc in expected.items() if digest(tensors[n]) != crc]
    return f"{len(wrong)} tensors differ, e.g. {wrong[0]}" if wrong else ""


def run(flash_dir, st_files, data_files, device, expected: dict, *, runs: int, cold: bool,
        only=None, fresh: bool = True, log=print) -> list:
    """Times each available loader ``runs`` times per mode, alternating loaders: each
    run in a fresh process (``fresh``, as a serving replica loads), or all in this one."""
    from .. import loader

    saved, loader.CACHE_AFTER_COLD_LOAD = loader.CACHE_AFTER_COLD_LOAD, False  # cold runs must stay cold
    try:
        with tempfile.TemporaryDirectory(prefix="flashtensors-bench-") as scratch:
            sample = _fresh_sampler(flash_dir, st_files, device, expected, scratch) if fresh else \
                _in_process_sampler(flash_dir, st_files, device, expected)
            return _run(sample, device, data_files, runs=runs, cold=cold, only=only, log=log)
    finally:
        loader.CACHE_AFTER_COLD_LOAD = saved


def _in_process_sampler(flash_dir, st_files, device, expected: dict):
    def sample(ld, checked: bool):
        """(seconds, error) of one load in this process."""
        start = time.perf_counter()
        tensors, _keepalive = ld.load(flash_dir, st_files, device, list(expected))
        settle(tensors, device)
        seconds = time.perf_counter() - start
        error = check(tensors, expected) if checked else ""
        tensors = _keepalive = None  # free before the next run
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        return seconds, error
    return sample


def _fresh_sampler(flash_dir, st_files, device, expected: dict, scratch: str):
    spec = {"device": str(device), "flash_dir": str(flash_dir), "files": [str(f) for f in st_files],
            "names": list(expected)}

    def sample(ld, checked: bool):
        """(seconds, error) of one load in a new Python process."""
        path = os.path.join(scratch, f"spec-{checked}.json")
        with open(path, "w") as f:
            json.dump({**spec, "loader": ld.name, "expected": expected if checked else None}, f)
        env = dict(os.environ)
        if ld.name == "cached (daemon)":
            from .peers import _daemon_socket

            env["FLASHTENSORS_SERVER"] = _daemon_socket(flash_dir)  # one daemon for every process
        proc = subprocess.run([sys.executable, "-m", "flashtensors.benchmark.worker", path], env=env,
                              capture_output=True, text=True, timeout=3600)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"worker failed ({proc.returncode}): {tail[:160]}"
        result = json.loads(lines[-1])
        return result["seconds"], result["error"]
    return sample


def _run(sample, device, data_files, *, runs: int, cold: bool, only, log) -> list:
    loaders = [ld for ld in LOADERS if only is None or ld.name in only]
    results = []
    for ld in loaders:
        why = ld.available(device)
        if why:
            log(f"  skipping {ld.name}: {why}")
    usable = [ld for ld in loaders if not ld.available(device)]
    modes = ["warm"] + (["cold"] if cold else [])
    for mode in modes:
        by_name = {ld.name: Result(ld.name, mode) for ld in usable}
        for i in range(runs):
            for ld in usable:
                res = by_name[ld.name]
                if res.error:
                    continue
                if mode == "warm":
                    system.warm_up(data_files)
                elif not system.drop_from_cache(data_files):
                    log("  warning: the files stayed in the page cache; this cold run is not cold")
                try:
                    seconds, res.error = sample(ld, checked=i == 0)
                    if seconds is not None:
                        res.seconds.append(seconds)
                except Exception as e:  # a peer's failure is reported, not fatal
                    res.error = f"{type(e).__name__}: {e}".splitlines()[0][:160]
                log(f"  {mode} run {i + 1}/{runs} {ld.name}: "
                    + (f"{res.seconds[-1]:.3f} s" if res.seconds and not res.error else res.error))
        results.extend(by_name.values())
    return results


def table(results: list, nbytes: int) -> str:
    """A text table: seconds, GB/s and speedup over safetensors, per mode."""
    modes = sorted({r.mode for r in results}, key=["warm", "cold"].index)
    rows = [["loader"] + [f"{m} {c}" for m in modes for c in ("s", "GB/s", "vs safetensors")]]
    base = {r.mode: r.median for r in results if r.loader == "safetensors load_file" and not r.error}
    for name in dict.fromkeys(r.loader for r in results):
        row = [name]
        for m in modes:
            r = next((x for x in results if x.loader == name and x.mode == m), None)
            if r is None or r.error or r.median is None:
                row += ["error" if r and r.error else "-", "", ""]
                continue
            speed = f"{base[m] / r.median:.2f}x" if base.get(m) else ""
            row += [f"{r.median:.3f}", f"{nbytes / 1e9 / r.median:.1f}", speed]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
