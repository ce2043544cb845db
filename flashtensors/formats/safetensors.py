"""Plain safetensors checkpoints, read where they lie, with no conversion: the dtype
table, the limits, the Hugging Face weight index, and the headers made into an index.
Which files of a location are read is the format registry's choice
(formats/__init__.py). Snapshot directories of the Hugging Face cache, whose files are
symlinks into its blobs directory, are read through the links.

Each file's header is untrusted input, parsed and validated natively
(csrc/safetensors_header.cpp) into the same tensor table a flash index becomes, so the
loader, the plan and the views do not know which format they read.
"""

from __future__ import annotations

import os
from functools import lru_cache

from .. import _native
from ..errors import FlashFormatError
from .index import DTYPE_NAMES, DTYPE_SIZES, MAX_FILES, MAX_NDIM, MAX_TENSORS, Found, Index, format_error

SUFFIX = ".safetensors"
HF_INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_HF_INDEX_BYTES = 128 << 20  # room for MAX_TENSORS entries of long names (~90 bytes each)
# safetensors dtype names -> the flash spec's names for the same dtypes: every dtype
# that safetensors' format and torch both have (safetensors' F6_E2M3 and F6_E3M2 have no
# torch dtype and are refused, naming the dtype and the tensor).
DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F4": "float4_e2m1fn_x2",
}
# safetensors elements per torch element where torch packs them: F4's shape counts 4-bit
# values, torch's float4_e2m1fn_x2 holds two, so the last dimension halves (as
# safetensors.torch.load_file does).
PACKED = {"F4": 2}


def hf_shard_names(raw: bytes, where: str) -> list:
    """The file names a Hugging Face weight index (its raw bytes; ``where`` names it in
    errors) maps tensors to, in first-use order. FlashFormatError if it is invalid, over
    MAX_HF_INDEX_BYTES, names more than MAX_FILES files, or a name is not a plain file
    name (shards lie beside the index, never elsewhere).

    Parsed natively, keeping only the distinct names: however the file is made, memory
    stays a small multiple of its size (``json.loads`` would build every object in it).

    Example:
        >>> hf_shard_names(b'{"weight_map": {"a": "m-1.safetensors", "b": "m-1.safetensors"}}', "idx")
        ['m-1.safetensors']
    """
    if len(raw) > MAX_HF_INDEX_BYTES:
        raise FlashFormatError(f"{where}: not a valid weight index (larger than {MAX_HF_INDEX_BYTES} bytes)")
    native = _native.module()
    try:
        names = native.hf_weight_files(raw, MAX_FILES)
    except native.FormatError as e:
        raise FlashFormatError(f"{where}: not a valid weight index ({e.args[0]})") from None
    except UnicodeDecodeError:  # a lone surrogate, escaped: no file has such a name
        raise FlashFormatError(f"{where}: not a valid weight index (a file name is not valid UTF-8)") from None
    bad = [n for n in names if os.path.basename(n) != n or n in ("", ".", "..") or "\0" in n or len(n) > 255]
    if bad:
        shown = bad[0] if len(bad[0]) <= 255 else bad[0][:60] + f"... ({len(bad[0])} characters)"
        raise FlashFormatError(f"{where}: not a valid weight index (bad file name {shown!r})")
    return names


def index_of_headers(headers, where: str) -> Index:
    """The index of safetensors files read as one checkpoint, from ``(file name, header
    bytes, file size, what to name the file in errors)`` per file, wherever the headers
    came from (a disk, a server). ``where`` names the whole in error messages."""
    native = _native.module()
    table = native.TensorTable()
    for name, header, size, described in headers:
        try:
            table.add_safetensors(name, header, size, _native_rules())
        except native.FormatError as e:
            raise format_error(described, *e.args) from None
    try:
        table.index_names()
    except native.FormatError as e:
        raise format_error(where, *e.args) from None
    return Index.from_table(table, kind="safetensors")


@lru_cache(maxsize=None)
def _native_rules():
    return _native.module().SafetensorsRules({
        "max_header_bytes": MAX_HEADER_BYTES, "max_ndim": MAX_NDIM, "max_tensors": MAX_TENSORS,
        "dtypes": [(st_name, DTYPE_NAMES.index(name), PACKED.get(st_name, 1)) for st_name, name in DTYPES.items()],
        "sizes": list(DTYPE_SIZES.values())})


# The first read of a safetensors file: its header length and, nearly always, its header.
HEADER_PROBE_BYTES = 256 << 10


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
    if len(probe) < 8:
        raise FlashFormatError(f"{where}: not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(probe[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise FlashFormatError(f"{where}: header of {n} bytes is larger than safetensors allows ({MAX_HEADER_BYTES})")
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
