"""Opening a checkpoint: location -> store -> format -> index. The one function every load,
check and adapter uses to learn what a location holds; what comes back is the same for
every format and every place (the native tensor table, and per data file what the native
reader reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import FLASH, FORMATS, Found, detect, find_format
from .formats.index import Index
from .stores import open_store


@dataclass
class Checkpoint:
    """An opened checkpoint.

    Attributes:
        location: what the caller named (a path or URL).
        store: where its files live (flashtensors/stores/api.py).
        found: the format that applied (``.name``: "flash", "hf-index", ...).
        index: the validated index (``.kind``: "flash" or "safetensors").
        names: per data file, its name in the store.
        objects: per data file, its identity (size, ETag) when opened.
        sources: per data file, what the native reader reads (a path, or a URL; with a
            local tier, the up-to-date local copy where there is one).
        here: per data file, whether its source is a file of this machine (the page
            cache, mapping and O_DIRECT apply to it).
    """

    location: object
    store: object
    found: Found
    index: Index
    names: list
    objects: list
    sources: list
    here: list

    @property
    def kind(self) -> str:
        return self.index.kind

    def described(self, file: int) -> str:
        """Data file ``file`` as messages name it."""
        return self.store.describe(self.names[file])

    def tensor_at(self, file: int, offset: int) -> str | None:
        """The name of the tensor whose bytes include ``offset`` of data file ``file``."""
        for t in self.index.tensors.values():
            if t.file == file and t.offset <= offset < t.offset + max(t.length, 1):
                return t.name
        return None


def open_checkpoint(location, *, timeout=None, cache_dir=None, formats=None) -> Checkpoint:
    """Opens the checkpoint at ``location``: a flash checkpoint directory (preferred where a
    directory holds both), a ``.safetensors`` file, or a directory of safetensors weights
    (Hugging Face layout), on this machine or at an ``http(s)://`` or ``s3://`` URL
    (``timeout``: see :func:`flashtensors.stores.resolve_timeout`; ``cache_dir``: the
    local tier for a URL). ``formats``: the formats to consider (default: all, see
    flashtensors/formats/__init__.py).

    Raises FlashFormatError when ``location`` holds none of them or what it holds is
    invalid, FlashRemoteError when a URL cannot be read.

    Example:
        >>> ckpt = open_checkpoint("/models/Qwen3-8B")                  # doctest: +SKIP
        >>> ckpt.found.name, ckpt.sources[0]
        ('hf-index', '/models/Qwen3-8B/model-00001-of-00005.safetensors')
    """
    store = open_store(location, timeout, cache_dir)
    found = detect(store, formats)
    index, objects = found.format.index(store, found)
    names = list(found.names)
    return Checkpoint(location, store, found, index, names, objects, [store.data_url(n) for n in names],
                      [store.is_here(n) for n in names])


def holds_checkpoint(location) -> bool:
    """Whether ``location`` holds a checkpoint of any registered format (cheaply: the
    index is not validated). Never raises for a missing or unreadable location.

    Example:
        >>> holds_checkpoint("/models/Qwen3-8B"), holds_checkpoint("/tmp")   # doctest: +SKIP
        (True, False)
    """
    from .errors import FlashError

    try:
        store = open_store(location)
        # A flash index counts whatever its state (the load then says what is wrong with it).
        return FLASH.present(store) or find_format(store, [f for f in FORMATS if f is not FLASH]) is not None
    except (FlashError, OSError):
        return False


def holds_flash(location) -> bool:
    """Whether ``location`` holds a flash checkpoint, which every load of it then reads
    (whatever else is there). Cheap: the index is not read. Never raises.

    Example:
        >>> holds_flash("/models/m"), holds_flash("/models/Qwen3-8B")          # doctest: +SKIP
        (True, False)
    """
    from .errors import FlashError

    try:
        return FLASH.present(open_store(location))
    except (FlashError, OSError):
        return False


def checkpoint_files(location, timeout=None) -> tuple | None:
    """``(kind, data file paths or URLs)`` of the checkpoint at ``location`` ("flash" or
    "safetensors"), chosen as every load chooses them, each checked to exist; None when it
    holds none. FlashFormatError for an invalid flash index or HF weight index, or one
    naming a missing file (a remote store: FlashRemoteError; ``timeout`` as for loads).

    Example:
        >>> checkpoint_files("/models/Qwen3-8B")                           # doctest: +SKIP
        ('safetensors', ['/models/Qwen3-8B/model-00001-of-00005.safetensors', ...])
    """
    store = open_store(location, timeout)
    found = find_format(store)
    if found is None:
        return None
    for name in found.names:
        if store.stat(name) is None:
            raise found.format.missing(store, name)
    return found.kind, [store.data_url(n) for n in found.names]
