"""Plain safetensors checkpoints, read where they lie, with no conversion.

What a path may hold: one ``.safetensors`` file, or a directory of them in the Hugging
Face layout: shards named by ``model.safetensors.index.json``, else ``model.safetensors``,
else every ``*.safetensors`` file. Snapshot directories of the Hugging Face cache, whose
files are symlinks into its blobs directory, are read through the links.

Each file's header is untrusted input, parsed and validated natively
(csrc/safetensors_header.cpp) into the same tensor table a flash index becomes, so the
loader, the plan and the views do not know which format they read.
"""

from __future__ import annotations

import os
import stat
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


def weight_files(path) -> list | None:
    """The safetensors files ``path`` holds, in load order, or None if it holds none.

    Raises FlashFormatError for a Hugging Face weight index that is invalid or names
    files that are missing.

    Example:
        >>> weight_files("/models/Qwen3-8B")                   # doctest: +SKIP
        ['/models/Qwen3-8B/model-00001-of-00005.safetensors', ...]
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path] if path.endswith(SUFFIX) else None
    if not os.path.isdir(path):
        return None
    index = os.path.join(path, HF_INDEX_FILENAME)
    if os.path.isfile(index):
        return hf_index_shards(index)
    single = os.path.join(path, SINGLE_FILENAME)
    if os.path.isfile(single):
        return [single]
    found = sorted(e.path for e in os.scandir(path) if e.name.endswith(SUFFIX) and e.is_file())
    return found or None


def hf_index_shards(index_path) -> list:
    """The files named by a Hugging Face weight index (``*.index.json``), in first-use
    order, as paths beside it. FlashFormatError if it is invalid, names a file elsewhere,
    or names a missing file."""
    index_path = os.fspath(index_path)
    try:
        with open(index_path, "rb") as f:
            raw = f.read(MAX_HF_INDEX_BYTES + 1)  # what is over the cap is never read
    except OSError as e:
        raise FlashFormatError(f"{index_path}: cannot read the weight index: {e.strerror}") from None
    shards = [os.path.join(os.path.dirname(index_path), name) for name in hf_shard_names(raw, index_path)]
    missing = [os.path.basename(p) for p in shards if not os.path.isfile(p)]
    if missing:
        raise FlashFormatError(f"{index_path}: names missing weight file(s): {', '.join(missing[:5])}"
                               f"{' and more' if len(missing) > 5 else ''}")
    return shards


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


def read_safetensors_index(files: list, where: str) -> tuple:
    """``(index, paths)`` of safetensors ``files`` read as one checkpoint: every header
    validated, tensors in file order. ``where`` names the whole in error messages."""
    paths = [os.path.abspath(f) for f in files]
    headers = [(os.path.basename(path), *_read_header(path), path) for path in paths]
    return index_of_headers(headers, where), paths


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


def _read_header(path: str) -> tuple:
    """The JSON header of a safetensors file and the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FlashFormatError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FlashFormatError(f"{path}: not a regular file")
        prefix = os.pread(fd, 8, 0)
        if len(prefix) < 8:
            raise FlashFormatError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES:
            raise FlashFormatError(f"{path}: header of {n} bytes is larger than safetensors allows "
                                   f"({MAX_HEADER_BYTES})")
        if 8 + n > st.st_size:
            raise FlashFormatError(f"{path}: header of {n} bytes does not fit in the file "
                                   f"({st.st_size} bytes; truncated?)")
        header = os.pread(fd, n, 8)
        if len(header) != n:
            raise FlashFormatError(f"{path}: the file ended inside its header (truncated?)")
        return header, st.st_size
    except OSError as e:
        raise FlashFormatError(f"{path}: cannot read the header: {e.strerror}") from None
    finally:
        os.close(fd)


@lru_cache(maxsize=None)
def _native_rules():
    return _native.module().SafetensorsRules({
        "max_header_bytes": MAX_HEADER_BYTES, "max_ndim": MAX_NDIM, "max_tensors": MAX_TENSORS,
        "dtypes": [(st_name, DTYPE_NAMES.index(name), PACKED.get(st_name, 1)) for st_name, name in DTYPES.items()],
        "sizes": list(DTYPE_SIZES.values())})
