"""The flash checkpoint format, version 1: constants, the dtype table, and the index.

``docs/format.md`` is the normative description; this module follows it. The index is
untrusted input: :func:`read_index` validates every field and enforces limits before
anything else looks at it (the native core parses it: csrc/flash_index.cpp).
"""

from __future__ import annotations

import json
from functools import lru_cache

from .. import _native
from ..errors import FlashFormatError
from ..stores.api import ObjectInfo
from .index import (
    DTYPE_SIZES,
    MAX_FILES,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_TENSOR_BYTES,
    MAX_TENSORS,
    Found,
    Index,
    format_error,
)

FORMAT_NAME = "flashtensors"
FORMAT_VERSION = 1
INDEX_FILENAME = "flash_index.json"
DATA_SUFFIX = ".flash"
ALIGNMENT = 4096
CHECKSUM = "crc32c"

# Limits on untrusted indexes (docs/format.md, "Limits").
MAX_INDEX_BYTES = 64 << 20


def parse_index_bytes(raw: bytes, where: str) -> Index:
    """Decodes and validates an index's raw bytes (natively: this is the per-tensor work
    of every load); ``where`` names it in error messages."""
    native = _native.module()
    try:
        table = native.TensorTable.from_flash_index(raw, _native_rules())
    except native.FormatError as e:
        raise format_error(where, *e.args) from None
    return Index.from_table(table)


@lru_cache(maxsize=None)
def _native_rules():
    # The spec's constants, handed to the native parser so that they live here only.
    return _native.module().FlashIndexRules({
        "format_name": FORMAT_NAME, "version": FORMAT_VERSION, "alignment": ALIGNMENT, "checksum": CHECKSUM,
        "data_suffix": DATA_SUFFIX, "max_tensors": MAX_TENSORS, "max_files": MAX_FILES, "max_ndim": MAX_NDIM,
        "max_tensor_bytes": MAX_TENSOR_BYTES, "max_name_bytes": MAX_NAME_BYTES, "dtypes": list(DTYPE_SIZES.items())})


def index_json(index: Index) -> str:
    """The ``flash_index.json`` text of ``index`` (what the writer commits)."""
    doc = {
        "format": FORMAT_NAME,
        "version": index.version,
        "alignment": ALIGNMENT,
        "checksum": CHECKSUM,
        "metadata": index.metadata,
        "files": [{"name": f.name, "size": f.size} for f in index.files],
        "tensors": [t.to_json() for t in index.tensors.values()],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


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
