"""Checking a checkpoint's bytes against the CRC-32C recorded for every tensor."""

from __future__ import annotations

from . import _native
from .checkpoint import is_flash_checkpoint
from .errors import FlashChecksumError, FlashError, FlashFormatError
from .format import data_file_paths, read_index
from .safetensors_format import weight_files


def verify(path, *, threads: int | None = None) -> int:
    """See :func:`flashtensors.flash.verify`."""
    from .loader import resolve_threads

    n_threads = resolve_threads(threads)
    if not is_flash_checkpoint(path) and weight_files(path):
        raise FlashError(f"{path}: safetensors files carry no checksums; only flash checkpoints can be verified "
                         "(`flashtensors convert` makes one)")
    index = read_index(path)
    paths = data_file_paths(path, index)
    entries = list(index.tensors.values())
    try:
        crcs = _native.module().checksum_ranges(
            paths, [(e.file, e.offset, e.length) for e in entries], n_threads)
    except OSError as e:
        raise FlashFormatError(f"{path}: reading the checkpoint failed: {e}") from None
    bad = [(e.name, paths[e.file]) for e, crc in zip(entries, crcs) if crc != e.crc32c]
    if bad:
        shown = ", ".join(f"{n!r} in {f}" for n, f in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FlashChecksumError(f"{path}: checksum mismatch for {len(bad)} tensor(s): {shown}{more}", bad)
    return len(entries)
