"""What every checkpoint format shares once parsed: the dtype table (spec names, item
sizes, their numbers in native tables), the limits on untrusted indexes, the index of a
checkpoint (:class:`Index`, one :class:`TensorEntry` per tensor) and :class:`Found`, a
format that applies to a store. The flash format (formats/flash.py) and safetensors
(formats/safetensors.py) both parse into these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import FlashFormatError

# Limits on untrusted indexes and headers (docs/format.md, "Limits").
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
                 version: int = 1, table=None, kind: str = "flash"):
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


def format_error(where: str, message: str, tensor: str | None = None) -> FlashFormatError:
    """The FlashFormatError for a native parser's complaint about ``where``."""
    if tensor is not None and len(tensor) > 200:  # a hostile file's name may be the size of the file
        tensor = f"{tensor[:60]}... ({len(tensor)} characters)"
    about = f" (tensor {tensor!r})" if tensor is not None else ""
    return FlashFormatError(f"{where}: {message}{about}")


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
