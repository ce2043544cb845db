"""What a path holds, whatever the format: the one place that tells a flash checkpoint
from plain safetensors. Everything downstream gets the same index (a native tensor
table) and the paths of its data files."""

from __future__ import annotations

import os

from .errors import FlashFormatError
from .format import INDEX_FILENAME, data_file_paths, read_index
from .safetensors_format import read_safetensors_index, weight_files


def open_checkpoint(path) -> tuple:
    """``(index, data file paths)`` of the checkpoint at ``path``: a flash checkpoint
    directory (preferred where a directory holds both), a ``.safetensors`` file, or a
    directory of safetensors weights (Hugging Face layout).

    Raises FlashFormatError when ``path`` holds none of them or what it holds is invalid.

    Example:
        >>> index, paths = open_checkpoint("/models/Qwen3-8B")  # doctest: +SKIP
    """
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
    return os.path.lexists(os.path.join(os.fspath(path), INDEX_FILENAME))
