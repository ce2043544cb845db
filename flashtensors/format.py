"""The flash checkpoint format, version 1: constants, the dtype table, and the index.

``docs/format.md`` is the normative description; this module follows it. The index is
untrusted input: :func:`read_index` validates every field and enforces limits before
anything else looks at it (the native core parses it: csrc/flash_index.cpp).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from functools import lru_cache

from . import _native
from .errors import FlashFormatError

FORMAT_NAME = "flashtensors"
FORMAT_VERSION = 1
INDEX_FILENAME = "flash_index.json"
DATA_SUFFIX = ".flash"
ALIGNMENT = 4096
CHECKSUM = "crc32c"

# Limits on untrusted indexes (docs/format.md, "Limits").
MAX_INDEX_BYTES = 64 << 20
MAX_TENSORS = 1_000_000
MAX_FILES = 100_000
MAX_NDIM = 64
MAX_TENSOR_BYTES = 1 << 48
MAX_NAME_BYTES = 4096

# Spec dtype name -> item size in bytes. The names are the spec's own; they happen to
# match torch's attribute names, which is how they map to torch dtypes.
DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "bool": 1, "complex64": 8, "complex128": 16,
    "float4_e2m1fn_x2": 1,  # two 4-bit floats a byte; added after the first release (docs/format.md)
}


def torch_dtype(name: str):
    """The torch dtype for a spec dtype name; FlashFormatError if this torch lacks it."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise FlashFormatError(f"dtype {name!r} is not available in torch {torch.__version__}")
    return dtype


def dtype_name(dtype) -> str:
    """The spec name of a torch dtype; FlashFormatError for dtypes the format lacks."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_SIZES:
        raise FlashFormatError(f"dtype {dtype} cannot be stored in a flash checkpoint")
    return name


def span_bytes(shape, strides, itemsize: int) -> int:
    """Bytes from a tensor's first element to the end of its last one."""
    if any(d == 0 for d in shape):
        return 0
    if strides is None:
        return math.prod(shape) * itemsize
    return (1 + sum((d - 1) * s for d, s in zip(shape, strides))) * itemsize


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live and how to read them."""

    name: str
    dtype: str
    shape: tuple
    file: int
    offset: int
    length: int
    crc32c: int | None  # None where the format has no checksums (safetensors)
    strides: tuple | None = None  # in elements; None means C-contiguous

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    def to_json(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.strides is not None:
            out["strides"] = list(self.strides)
        out.update(file=self.file, offset=self.offset, length=self.length, crc32c=f"{self.crc32c:08x}")
        return out


@dataclass(frozen=True)
class DataFileEntry:
    name: str
    size: int


DTYPE_NAMES = list(DTYPE_SIZES)  # a dtype's position here is its number in native tables


class Index:
    """A parsed, validated ``flash_index.json`` (or an index being written), or the
    headers of safetensors files read in place (``kind == "safetensors"``: no checksums,
    ``crc32c`` is None).

    ``tensors`` maps names to :class:`TensorEntry` in saved order, and ``metadata`` is a
    dict of strings; for a read index both are built on first use from ``table``, the
    native tensor table loads work from.
    """

    def __init__(self, files: list, tensors: dict | None = None, metadata: dict | None = None,
                 version: int = FORMAT_VERSION, table=None, kind: str = "flash"):
        self.kind = kind  # "flash", or "safetensors" for plain safetensors files read in place
        self.files = files
        self._metadata = metadata if metadata is not None or table is not None else {}
        self.version = version
        self.table = table
        self._tensors = tensors

    @classmethod
    def from_table(cls, table, kind: str = "flash") -> Index:
        files = [DataFileEntry(name, size) for name, size in table.files()]
        return cls(files=files, version=table.version, table=table, kind=kind)

    @property
    def metadata(self) -> dict:
        """The saved string metadata; for a read index built on first use (loads never
        need it, and a hostile index may hold millions of entries)."""
        if self._metadata is None:
            self._metadata = self.table.metadata()
        return self._metadata

    @property
    def tensors(self) -> dict:
        if self._tensors is None:
            self._tensors = {
                name: TensorEntry(name=name, dtype=DTYPE_NAMES[dtype], shape=shape, file=file, offset=offset,
                                  length=length, crc32c=crc, strides=strides)
                for name, dtype, shape, strides, file, offset, length, crc in self.table.entries()}
        return self._tensors

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "alignment": ALIGNMENT,
            "checksum": CHECKSUM,
            "metadata": self.metadata,
            "files": [{"name": f.name, "size": f.size} for f in self.files],
            "tensors": [t.to_json() for t in self.tensors.values()],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def read_index(path) -> Index:
    """Reads and validates the index of the checkpoint in directory ``path``.

    Raises FlashFormatError, naming the file and the tensor, for anything the spec forbids.

    Example:
        >>> index = read_index("/models/m")
        >>> index.tensors["weight"].shape
        (3, 3)
    """
    return parse_index_bytes(read_index_bytes(path), os.path.join(os.fspath(path), INDEX_FILENAME))


def read_index_bytes(path) -> bytes:
    """The raw bytes of the index of the checkpoint in directory ``path`` (at most
    MAX_INDEX_BYTES); FlashFormatError if it is missing, unreadable or not a file."""
    index_path = os.path.join(os.fspath(path), INDEX_FILENAME)
    try:
        # O_NONBLOCK: something other than a file under the index's name must not hang us.
        fd = os.open(index_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FlashFormatError(f"{index_path}: the index is not a regular file")
            raw = _read_up_to(fd, min(st.st_size, MAX_INDEX_BYTES) + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise FlashFormatError(f"{index_path}: no flash checkpoint here (index file missing)") from None
    except OSError as e:
        raise FlashFormatError(f"{index_path}: cannot read the index: {e.strerror}") from None
    if len(raw) > MAX_INDEX_BYTES:
        raise FlashFormatError(f"{index_path}: index larger than {MAX_INDEX_BYTES} bytes")
    return raw


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd`` (fewer only at the end of the file)."""
    parts, size = [], 0
    while size < limit:
        part = os.read(fd, limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_index_bytes(raw: bytes, where: str) -> Index:
    """Decodes and validates an index's raw bytes (natively: this is the per-tensor work
    of every load); ``where`` names it in error messages."""
    native = _native.module()
    try:
        table = native.TensorTable.from_flash_index(raw, _native_rules())
    except native.FormatError as e:
        raise format_error(where, *e.args) from None
    return Index.from_table(table)


def format_error(where: str, message: str, tensor: str | None = None) -> FlashFormatError:
    """The FlashFormatError for a native parser's complaint about ``where``."""
    if tensor is not None and len(tensor) > 200:  # a hostile file's name may be the size of the file
        tensor = f"{tensor[:60]}... ({len(tensor)} characters)"
    about = f" (tensor {tensor!r})" if tensor is not None else ""
    return FlashFormatError(f"{where}: {message}{about}")


@lru_cache(maxsize=None)
def _native_rules():
    # The spec's constants, handed to the native parser so that they live here only.
    return _native.module().FlashIndexRules({
        "format_name": FORMAT_NAME, "version": FORMAT_VERSION, "alignment": ALIGNMENT, "checksum": CHECKSUM,
        "data_suffix": DATA_SUFFIX, "max_tensors": MAX_TENSORS, "max_files": MAX_FILES, "max_ndim": MAX_NDIM,
        "max_tensor_bytes": MAX_TENSOR_BYTES, "max_name_bytes": MAX_NAME_BYTES, "dtypes": list(DTYPE_SIZES.items())})
