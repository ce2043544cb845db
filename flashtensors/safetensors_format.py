"""Plain safetensors checkpoints, read where they lie, with no conversion: the dtype
table, the limits, the Hugging Face weight index, and the headers made into an index.
Which files of a location are read is the format registry's choice
(flashtensors/formats.py). Snapshot directories of the Hugging Face cache, whose files are
symlinks into its blobs directory, are read through the links.

Each file's header is untrusted input, parsed and validated natively
(csrc/safetensors_header.cpp) into the same tensor table a flash index becomes, so the
loader, the plan and the views do not know which format they read.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from . import _native
from .errors import FlashFormatError
from .format import DTYPE_NAMES, DTYPE_SIZES, MAX_NDIM, Index, format_error

SUFFIX = ".safetensors"
HF_INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# safetensors dtype names -> the flash spec's names for the same dtypes.
DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}


def hf_shard_names(raw: bytes, where: str) -> list:
    """The file names a Hugging Face weight index (its raw bytes; ``where`` names it in
    errors) maps tensors to, in first-use order. FlashFormatError if it is invalid or a
    name is not a plain file name (shards lie beside the index, never elsewhere)."""
    try:
        names = list(dict.fromkeys(json.loads(raw)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlashFormatError(f"{where}: not a valid weight index ({type(e).__name__}: {e})") from None
    bad = [n for n in names if not isinstance(n, str) or os.path.basename(n) != n or n in ("", ".", "..")]
    if bad:
        raise FlashFormatError(f"{where}: not a valid weight index (bad file name {bad[0]!r})")
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
        "max_header_bytes": MAX_HEADER_BYTES, "max_ndim": MAX_NDIM,
        "dtypes": [(st_name, DTYPE_NAMES.index(name)) for st_name, name in DTYPES.items()],
        "sizes": list(DTYPE_SIZES.values())})
