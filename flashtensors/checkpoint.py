"""What a path holds, whatever the format: the one place that tells a flash checkpoint
from plain safetensors. Everything downstream gets the same index (a native tensor
table) and the paths of its data files."""

from __future__ import annotations

import os

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


def is_flash_checkpoint(path) -> bool:
    """Whether ``path`` is a directory with a flash index (whatever its state)."""
    if is_url(path):
        return False
    return os.path.lexists(os.path.join(os.fspath(path), INDEX_FILENAME))
