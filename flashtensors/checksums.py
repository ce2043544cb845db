"""Checking a checkpoint's bytes against the CRC-32C recorded for every tensor."""

from __future__ import annotations

from . import _native
from .checkpoint import is_flash_checkpoint, open_checkpoint
from .errors import FlashChecksumError, FlashError, FlashFormatError, FlashRemoteError
from .format import data_file_paths, read_index
from .remote import is_url, resolve_timeout
from .safetensors_format import weight_files


def verify(path, *, threads: int | None = None, timeout=None) -> int:
    """See :func:`flashtensors.flash.verify`."""
    from .loader import resolve_threads

    n_threads = resolve_threads(threads)
    timeout = resolve_timeout(timeout)
    if is_url(path):
        index, paths = open_checkpoint(path, timeout)
    else:
        if not is_flash_checkpoint(path) and weight_files(path):
            index = None
        else:
            index = read_index(path)
            paths = data_file_paths(path, index)
    if index is None or index.kind != "flash":
        raise FlashError(f"{path}: safetensors files carry no checksums; only flash checkpoints can be verified "
                         "(`flashtensors convert` makes one)")
    entries = list(index.tensors.values())
    native = _native.module()
    try:
        crcs = native.checksum_ranges(paths, [(e.file, e.offset, e.length) for e in entries], n_threads, timeout)
    except native.RemoteError as e:
        raise FlashRemoteError(str(e), e.status, e.url) from None
    except OSError as e:
        raise FlashFormatError(f"{path}: reading the checkpoint failed: {e}") from None
    bad = [(e.name, paths[e.file]) for e, crc in zip(entries, crcs) if crc != e.crc32c]
    if bad:
        shown = ", ".join(f"{n!r} in {f}" for n, f in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FlashChecksumError(f"{path}: checksum mismatch for {len(bad)} tensor(s): {shown}{more}", bad)
    return len(entries)
