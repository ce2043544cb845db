"""The one format registry: which files of a store make the checkpoint, in priority order,
and how they become the index (one native tensor table, whatever the format).

    1. flash         a flash index (flash_index.json) and its data files
    2. hf-index      the shards a Hugging Face weight index (model.safetensors.index.json) names
    3. single        model.safetensors
    4. all-files     every *.safetensors file (stores that can be listed)
    5. one-file      the one .safetensors file the location named

Every caller that asks what a location holds (load_dict, load_into, verify, read_index,
is_checkpoint, info, convert, bench, the cache daemon, the vLLM, transformers and accelerate
adapters) goes through :func:`detect`, so the same files are chosen everywhere. Adding a
format is one module here with a class that has ``find`` and ``index``, and a line in FORMATS.

Example:
    >>> detect(open_store("/models/Qwen3-8B")).name                      # doctest: +SKIP
    'hf-index'
"""

from __future__ import annotations

from .flash import INDEX_FILENAME, FlashFormat
from .index import Found
from .safetensors import (
    HF_INDEX_FILENAME,
    SINGLE_FILENAME,
    SUFFIX,
    AllFilesFormat,
    HfIndexFormat,
    OneFileFormat,
    SingleFileFormat,
)

FLASH = FlashFormat()
FORMATS = [FLASH, HfIndexFormat(), SingleFileFormat(), AllFilesFormat(), OneFileFormat()]


def find_format(store, formats=None) -> Found | None:
    """The first format of ``formats`` (default: all, in priority order) that applies to
    ``store``, or None."""
    for fmt in formats or FORMATS:
        found = fmt.find(store)
        if found is not None:
            return found
    return None


def detect(store, formats=None) -> Found:
    """The first format of ``formats`` (default: all, in priority order) that applies to
    ``store``. Raises the store's "missing" error (FlashFormatError locally, FlashRemoteError
    with status 404 remotely) when none does, FlashFormatError for an invalid index.

    Example:
        >>> detect(open_store("/models/m")).names                        # doctest: +SKIP
        ['weights-1a2b-00000.flash']
    """
    found = find_format(store, formats)
    if found is not None:
        return found
    if store.single is None and store.local:
        raise store.missing(INDEX_FILENAME, "no flash checkpoint here (index file missing), "
                                            "and no safetensors weights either")
    raise store.missing("", f"no checkpoint here (none of {INDEX_FILENAME}, {HF_INDEX_FILENAME}, "
                            f"{SINGLE_FILENAME}{', *' + SUFFIX if store.listable else ''} found)")


def safetensors_formats() -> list:
    """The registry's safetensors formats, in priority order (what `convert` reads)."""
    return [f for f in FORMATS if f.kind == "safetensors"]


