"""The machine: what it is, how to make files cold, and the ceilings a loader can reach."""

from __future__ import annotations

import mmap
import os
import platform
import time
from pathlib import Path

BLOCK = 64 << 20


def describe(device) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [f"{os.cpu_count()} x {cpu}", f"{ram:.0f} GiB RAM", f"torch {torch.__version__}",
             f"Python {platform.python_version()}"]
    if device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    return ", ".join(parts)


def drop_from_cache(files) -> bool:
    """Evicts the files' pages from the page cache (any user may do this for files it
    can open). Returns True when they are gone."""
    from .. import _native

    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return all(_native.module().resident_fraction(str(f)) < 0.05 for f in files)


def warm_up(files) -> None:
    """Reads the files once so that they sit in the page cache (skipping those already
    wholly there: reading them again would only copy memory)."""
    from .. import _native

    buf = bytearray(BLOCK)
    for f in files:
        if _native.module().resident_fraction(str(f)) >= 1.0:
            continue
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def odirect_read_rate(files) -> float | None:
    """GB/s of one thread reading the files sequentially with O_DIRECT in 64 MiB blocks
    (like `dd iflag=direct bs=64M`), after evicting them from the cache. None where the
    filesystem refuses O_DIRECT."""
    drop_from_cache(files)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    total, start = 0, time.perf_counter()
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return None
        try:
            while True:
                n = os.readv(fd, [buf])
                total += n
                if n < BLOCK:
                    break
        except OSError:
            return None
        finally:
            os.close(fd)
    return total / 1e9 / (time.perf_counter() - start)


def pinned_h2d_rate(device, nbytes: int = 1 << 30) -> float:
    """GB/s of one pinned host-to-device copy of ``nbytes``."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return nbytes / 1e9 / best
