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
format is one class here with ``find`` and ``index``.

Example:
    >>> detect(open_store("/models/Qwen3-8B")).name                      # doctest: +SKIP
    'hf-index'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FlashFormatError
from .format import INDEX_FILENAME, MAX_INDEX_BYTES, Index, parse_index_bytes
from .safetensors_format import (
    HF_INDEX_FILENAME,
    MAX_HEADER_BYTES,
    MAX_HF_INDEX_BYTES,
    SINGLE_FILENAME,
    SUFFIX,
    hf_shard_names,
    index_of_headers,
)
from .store_api import ObjectInfo

# The first read of a safetensors file: its header length and, nearly always, its header.
HEADER_PROBE_BYTES = 256 << 10


@dataclass
class Found:
    """A format that applies to a store: its data files' names, in load order, and the
    small files read to learn them (by name: the flash index, the HF weight index)."""

    format: object
    names: list
    small: dict = field(default_factory=dict)
    index: Index | None = None  # when finding it parsed the index already

    @property
    def name(self) -> str:
        return self.format.name

    @property
    def kind(self) -> str:
        return self.format.kind


class FlashFormat:
    name, kind = "flash", "flash"

    def missing(self, store, name: str):
        return store.missing(name, "data file missing")

    def present(self, store) -> bool:
        """Whether ``store`` has a flash index (whatever its state): cheaper than ``find``."""
        try:
            return store.single is None and store.stat(INDEX_FILENAME) is not None
        except FlashFormatError:  # something other than a file under the index's name
            return True

    def find(self, store) -> Found | None:
        if store.single is not None:
            return None
        got = store.read(INDEX_FILENAME, missing_ok=True, limit=MAX_INDEX_BYTES + 1)
        if got is None:
            return None
        raw = got[0]
        if len(raw) > MAX_INDEX_BYTES:
            raise FlashFormatError(f"{store.describe(INDEX_FILENAME)}: index larger than {MAX_INDEX_BYTES} bytes")
        index = parse_index_bytes(raw, store.describe(INDEX_FILENAME))
        return Found(self, [f.name for f in index.files], {INDEX_FILENAME: raw}, index)

    def index(self, store, found: Found) -> tuple:
        """``(index, [ObjectInfo per data file])``, every data file checked to exist with
        its recorded size."""
        index = found.index
        objects = []
        for i, f in enumerate(index.files):
            if store.local:
                store.check_inside(f.name)
            info = store.stat(f.name)
            if info is None:
                raise store.missing(f.name, f"data file missing{_needed_by(index, i)}")
            if info.size is not None and info.size != f.size:
                raise FlashFormatError(
                    f"{store.describe(f.name)}: data file is {info.size} bytes, the index says {f.size} "
                    f"(truncated or replaced){_beyond(index, i, info.size)}")
            objects.append(ObjectInfo(f.size, info.etag))
        return index, objects


class SafetensorsFormat:
    """The safetensors layouts: which files, by one of the rules below; then every header
    is read (from the file's first bytes) and validated natively into one index."""

    kind = "safetensors"

    def missing(self, store, name: str):
        return store.missing(name, "weight file missing")

    def index(self, store, found: Found) -> tuple:
        headers, objects = [], []
        for name in found.names:
            got = read_header(store, name)
            if got is None:
                raise self.missing(store, name)
            header, info = got
            headers.append((name, header, info.size, store.describe(name)))
            objects.append(info)
        where = store.describe(found.names[0]) if store.single else store.describe("").rstrip("/")
        return index_of_headers(headers, where), objects


class HfIndexFormat(SafetensorsFormat):
    name = "hf-index"

    def missing(self, store, name: str):
        return store.missing(HF_INDEX_FILENAME, f"names missing weight file {name}")

    def find(self, store) -> Found | None:
        if store.single is not None:
            return None
        got = store.read(HF_INDEX_FILENAME, missing_ok=True, limit=MAX_HF_INDEX_BYTES + 1)
        if got is None:
            return None
        names = hf_shard_names(got[0], store.describe(HF_INDEX_FILENAME))
        return Found(self, names, {HF_INDEX_FILENAME: got[0]})


class SingleFileFormat(SafetensorsFormat):
    name = "single"

    def find(self, store) -> Found | None:
        if store.single is None and store.stat(SINGLE_FILENAME) is not None:
            return Found(self, [SINGLE_FILENAME])
        return None


class AllFilesFormat(SafetensorsFormat):
    name = "all-files"

    def find(self, store) -> Found | None:
        if store.single is not None or not store.listable:
            return None
        names = sorted(n for n in store.list() if n.endswith(SUFFIX))
        return Found(self, names) if names else None


class OneFileFormat(SafetensorsFormat):
    name = "one-file"

    def find(self, store) -> Found | None:
        return Found(self, [store.single]) if store.single is not None else None


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


def read_header(store, name: str) -> tuple | None:
    """``(header bytes, ObjectInfo)`` of safetensors file ``name`` of ``store``, checked
    against the file's size and safetensors' header limit (FlashFormatError naming it);
    None if there is no such file."""
    where = store.describe(name)
    got = store.read(name, 0, HEADER_PROBE_BYTES - 1, missing_ok=True)
    if got is None:
        return None
    probe, info = got
    if info.size is None:
        raise store.missing(name, "the server did not tell the file's size")
    n = int.from_bytes(probe[:8], "little")
    if len(probe) < 8 or n > MAX_HEADER_BYTES:
        # Not a damaged safetensors file but another kind of file: its first 8 bytes read
        # as a header length would be meaningless, its size says what it is.
        raise FlashFormatError(f"{where}: not a safetensors file ({info.size} bytes, not beginning with a "
                               "safetensors header)")
    if 8 + n > info.size:
        raise FlashFormatError(f"{where}: header of {n} bytes does not fit in the file ({info.size} bytes; "
                               "truncated?)")
    header = probe[8:8 + n]
    if len(header) < n:
        rest, _ = store.read(name, 8 + len(header), 8 + n - 1)
        header += rest
    if len(header) != n:
        raise FlashFormatError(f"{where}: the file ended inside its header (truncated?)")
    return header, info


def _needed_by(index: Index, file: int) -> str:
    for t in index.tensors.values():
        if t.file == file:
            return f" (needed by tensor {t.name!r})"
    return ""


def _beyond(index: Index, file: int, size: int) -> str:
    for t in index.tensors.values():
        if t.file == file and t.offset + t.length > size:
            return f"; tensor {t.name!r} lies beyond its end"
    return ""
