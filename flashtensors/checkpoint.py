"""What a path holds, whatever the format: the one place that tells a flash checkpoint
from plain safetensors. Everything downstream gets the same index (a native tensor
table) and the paths of its data files."""

from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import FlashFormatError
from .format import INDEX_FILENAME, data_file_paths, read_index
from .remote import is_url, resolve_timeout
from .safetensors_format import read_safetensors_index, weight_files


def open_checkpoint(path, timeout=None) -> tuple:
    """``(index, data file paths)`` of the checkpoint at ``path``: a flash checkpoint
    directory (preferred where a directory holds both), a ``.safetensors`` file, or a
    directory of safetensors weights (Hugging Face layout). ``path`` may be an
    ``http(s)://`` or ``s3://`` URL of any of them: the data "paths" are then URLs the
    native reader fetches (``timeout``: see :func:`flashtensors.remote.resolve_timeout`).

    Raises FlashFormatError when ``path`` holds none of them or what it holds is invalid,
    FlashRemoteError when a URL cannot be read.

    Example:
        >>> index, paths = open_checkpoint("/models/Qwen3-8B")  # doctest: +SKIP
        >>> index, urls = open_checkpoint("s3://bucket/Qwen3-8B")  # doctest: +SKIP
    """
    if is_url(path):
        from .remote.checkpoint import open_remote

        ckpt = open_remote(path, resolve_timeout(timeout))
        return ckpt.index, ckpt.data_urls
    if is_flash_checkpoint(path):
        index = read_index(path)
        return index, data_file_paths(path, index)
    files = weight_files(path)
    if files is None:
        index_path = os.path.join(os.fspath(path), INDEX_FILENAME)
        raise FlashFormatError(f"{index_path}: no flash checkpoint here (index file missing), "
                               "and no safetensors weights either")
    return read_safetensors_index(files, os.fspath(path))


@contextmanager
def opened_for_load(path, timeout, cache_dir, threads: int, wanted=None):
    """Opens the checkpoint at ``path`` for one load: yields ``(index, paths, tees)``,
    where ``tees`` (None, or per data file a native FileTee or None) are for the native
    reads. With a URL and a ``cache_dir`` (the local tier, docs/remote.md), ``paths`` are
    the up-to-date local copies where there are some, and the files streamed are copied
    there: committed when the block ends normally, removed when it raises. ``wanted``:
    names of the tensors the load reads (None: all).

    Example:
        >>> with opened_for_load("s3://b/m", 30, "/cache", 8) as (index, paths, tees):  # doctest: +SKIP
        ...     plan.execute(paths, bases, 8, CHUNK_BYTES, tees=tees)
    """
    if not is_url(path) or cache_dir is None:
        index, paths = open_checkpoint(path, timeout)
        yield index, paths, None
        return
    from .remote.cached import CachedLoad
    from .remote.checkpoint import open_remote

    timeout = resolve_timeout(timeout)
    load = CachedLoad(open_remote(path, timeout, cache_dir), wanted)
    try:
        yield load.ckpt.index, load.paths, load.tees
    except BaseException:
        load.abort()
        raise
    load.commit(threads, timeout)


def is_flash_checkpoint(path) -> bool:
    """Whether ``path`` is a directory with a flash index (whatever its state)."""
    if is_url(path):
        return False
    return os.path.lexists(os.path.join(os.fspath(path), INDEX_FILENAME))
