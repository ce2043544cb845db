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

import os
from functools import lru_cache

from . import _native
from .errors import FlashFormatError
from .format import DTYPE_NAMES, DTYPE_SIZES, MAX_FILES, MAX_NDIM, MAX_TENSORS, Index, format_error

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
