"""Checking a checkpoint's stored bytes against the CRC-32C recorded for every tensor
(``flash.verify``), without loading it. Loads check the bytes they loaded instead, as a
step of reading (flashtensors/reading.py)."""

from __future__ import annotations

from . import _native
from .checkpoint import open_checkpoint
from .errors import FlashFormatError
from .options import LoadOptions
from .reading import checksum_error, execute


def verify(location, *, threads: int | None = None, timeout=None) -> int:
    """See :func:`flashtensors.flash.verify`."""
    options = LoadOptions.resolve(location, threads=threads, timeout=timeout, verify=True)
    ckpt = open_checkpoint(location, timeout=options.timeout)
    if ckpt.kind != "flash":  # said for a check of stored bytes, not a load's verify=True
        raise FlashFormatError(f"{location}: {ckpt.kind} files carry no checksums, so there is nothing to verify; "
                               "`flashtensors convert` makes a flash checkpoint, which records a CRC-32C per tensor")
    entries = list(ckpt.index.tensors.values())
    ranges = [(e.file, e.offset, e.length) for e in entries]
    crcs = []
    try:
        execute(ckpt, lambda n: crcs.extend(_native.module().checksum_ranges(ckpt.sources, ranges, n,
                                                                              options.timeout)),
                options.threads, to_gpu=False)
    finally:
        _native.module().release_idle_connections()
    bad = [e for e, crc in zip(entries, crcs) if crc != e.crc32c]
    if bad:
        raise checksum_error(ckpt, bad)
    return len(entries)
