"""The flash checkpoint format, version 1: constants, the dtype table, and the index.

``docs/format.md`` is the normative description; this module follows it. The index is
untrusted input: :func:`read_index` validates every field and enforces limits before
anything else looks at it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

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
    crc32c: int
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


@dataclass
class Index:
    """A parsed, validated ``flash_index.json``."""

    files: list
    tensors: dict  # name -> TensorEntry, in saved order
    metadata: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION

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
    index_path = Path(path) / INDEX_FILENAME
    return parse_index_bytes(read_index_bytes(path), str(index_path))


def read_index_bytes(path) -> bytes:
    """The raw bytes of the index of the checkpoint in directory ``path`` (at most
    MAX_INDEX_BYTES); FlashFormatError if it is missing, unreadable or not a file."""
    index_path = Path(path) / INDEX_FILENAME
    try:
        # O_NONBLOCK: something other than a file under the index's name must not hang us.
        with os.fdopen(os.open(index_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FlashFormatError(f"{index_path}: the index is not a regular file")
            raw = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise FlashFormatError(f"{index_path}: no flash checkpoint here (index file missing)") from None
    except OSError as e:
        raise FlashFormatError(f"{index_path}: cannot read the index: {e.strerror}") from None
    if len(raw) > MAX_INDEX_BYTES:
        raise FlashFormatError(f"{index_path}: index larger than {MAX_INDEX_BYTES} bytes")
    return raw


def parse_index_bytes(raw: bytes, where: str) -> Index:
    """Decodes and validates an index's raw bytes; ``where`` names it in error messages."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also huge integers
        raise FlashFormatError(f"{where}: index is not valid JSON: {e}") from None
    return parse_index(doc, where)


def parse_index(doc, where: str) -> Index:
    """Validates a decoded index document; ``where`` names it in error messages."""
    v = _Validator(where)
    v.check(isinstance(doc, dict), "index must be a JSON object")
    v.check(doc.get("format") == FORMAT_NAME, f"not a flash index (format is {doc.get('format')!r})")
    version = doc.get("version")
    v.check(_is_int(version), "version must be an integer")
    v.check(version <= FORMAT_VERSION,
            f"format version {version} is newer than this flashtensors reads ({FORMAT_VERSION}); upgrade")
    v.check(version >= 1, f"format version {version} is invalid")
    v.check(doc.get("alignment") == ALIGNMENT, f"alignment must be {ALIGNMENT}")
    v.check(doc.get("checksum") == CHECKSUM, f"checksum must be {CHECKSUM!r}")
    metadata = doc.get("metadata", {})
    v.check(isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(x, str)
                                               for k, x in metadata.items()),
            "metadata must map strings to strings")
    files = _parse_files(doc.get("files"), v)
    tensors = _parse_tensors(doc.get("tensors"), files, v)
    return Index(files=files, tensors=tensors, metadata=metadata, version=version)


class _Validator:
    def __init__(self, where: str):
        self.where = where

    def check(self, ok: bool, message: str, tensor: str | None = None) -> None:
        if not ok:
            about = f" (tensor {tensor!r})" if tensor is not None else ""
            raise FlashFormatError(f"{self.where}: {message}{about}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _safe_file_name(name) -> bool:
    # Data files live directly in the checkpoint directory: no separators, no '..'.
    return (isinstance(name, str) and name.endswith(DATA_SUFFIX) and 0 < len(name.encode("utf-8", "replace")) <= 255
            and "/" not in name and "\\" not in name and "\0" not in name
            and name not in (".", "..") and not name.startswith("."))


def _parse_files(raw, v: _Validator) -> list:
    v.check(isinstance(raw, list), "files must be a list")
    v.check(len(raw) <= MAX_FILES, f"more than {MAX_FILES} data files")
    files, seen = [], set()
    for i, f in enumerate(raw):
        v.check(isinstance(f, dict), f"files[{i}] must be an object")
        name, size = f.get("name"), f.get("size")
        v.check(_safe_file_name(name), f"files[{i}] has an unsafe or invalid name {name!r}")
        v.check(name not in seen, f"data file {name!r} listed twice")
        v.check(_is_int(size) and 0 <= size <= MAX_TENSOR_BYTES and size % ALIGNMENT == 0,
                f"data file {name!r} has an invalid size {size!r}")
        seen.add(name)
        files.append(DataFileEntry(name, size))
    return files


def _parse_tensors(raw, files: list, v: _Validator) -> dict:
    v.check(isinstance(raw, list), "tensors must be a list")
    v.check(len(raw) <= MAX_TENSORS, f"more than {MAX_TENSORS} tensors")
    tensors = {}
    for i, t in enumerate(raw):
        v.check(isinstance(t, dict), f"tensors[{i}] must be an object")
        name = t.get("name")
        v.check(isinstance(name, str) and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES,
                f"tensors[{i}] has an invalid name")
        v.check(name not in tensors, "tensor listed twice", name)
        tensors[name] = _parse_tensor(t, name, files, v)
    return tensors


def _parse_tensor(t: dict, name: str, files: list, v: _Validator) -> TensorEntry:
    dtype = t.get("dtype")
    v.check(isinstance(dtype, str) and dtype in DTYPE_SIZES, f"unknown dtype {dtype!r}", name)
    itemsize = DTYPE_SIZES[dtype]
    shape = t.get("shape")
    v.check(isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(_is_int(d) and 0 <= d <= MAX_TENSOR_BYTES for d in shape), "invalid shape", name)
    v.check(math.prod(shape) * itemsize <= MAX_TENSOR_BYTES, "tensor too large", name)
    strides = t.get("strides")
    if strides is not None:
        v.check(isinstance(strides, list) and len(strides) == len(shape)
                and all(_is_int(s) and 0 <= s <= MAX_TENSOR_BYTES for s in strides), "invalid strides", name)
    file, offset, length = t.get("file"), t.get("offset"), t.get("length")
    v.check(_is_int(file) and 0 <= file < len(files), f"invalid data file number {file!r}", name)
    v.check(_is_int(offset) and 0 <= offset <= MAX_TENSOR_BYTES and offset % itemsize == 0,
            f"invalid offset {offset!r}", name)
    expected = span_bytes(shape, strides, itemsize)
    v.check(length == expected, f"length {length!r} does not match shape and dtype ({expected})", name)
    v.check(offset + length <= files[file].size,
            f"bytes [{offset}, {offset + length}) lie beyond the end of {files[file].name}", name)
    crc = t.get("crc32c")
    v.check(isinstance(crc, str) and len(crc) == 8 and all(c in "0123456789abcdef" for c in crc),
            "invalid crc32c", name)
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), file=file, offset=offset, length=length,
                       crc32c=int(crc, 16), strides=tuple(strides) if strides is not None else None)


def data_file_paths(path, index: Index) -> list:
    """Absolute paths of the index's data files, checked to exist, to be regular files
    inside the checkpoint directory (no symlink escapes) and to have their recorded sizes."""
    root = Path(path).resolve()
    out = []
    for i, f in enumerate(index.files):
        p = root / f.name
        real = Path(os.path.realpath(p))
        if real.parent != root:
            raise FlashFormatError(f"{p}: data file resolves outside the checkpoint directory")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise FlashFormatError(f"{p}: data file missing{_first_tensor_in(index, i)}") from None
        except OSError as e:
            raise FlashFormatError(f"{p}: cannot stat data file: {e.strerror}") from None
        if not os.path.isfile(real):
            raise FlashFormatError(f"{p}: not a regular file")
        if st.st_size != f.size:
            raise FlashFormatError(
                f"{p}: data file is {st.st_size} bytes, the index says {f.size} "
                f"(truncated or replaced){_first_tensor_beyond(index, i, st.st_size)}")
        out.append(str(real))
    return out


def _first_tensor_in(index: Index, file: int) -> str:
    for t in index.tensors.values():
        if t.file == file:
            return f" (needed by tensor {t.name!r})"
    return ""


def _first_tensor_beyond(index: Index, file: int, size: int) -> str:
    for t in index.tensors.values():
        if t.file == file and t.offset + t.length > size:
            return f"; tensor {t.name!r} lies beyond its end"
    return ""
