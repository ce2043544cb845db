"""Writing flash checkpoints: streaming, storage-sharing aware, and crash safe.

A save writes new data files under fresh names beside the old ones, then replaces the
index with one atomic rename; only after that are the old data files removed. A save
that fails or is killed at any point leaves the previous checkpoint loadable, and its
leftovers are removed by the next save into the same directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
from pathlib import Path

from . import _native
from .errors import FlashError
from .files import fsync_dir, unlink_quietly
from .formats import FLASH
from .formats.flash import ALIGNMENT, DATA_SUFFIX, INDEX_FILENAME, index_json
from .formats.index import DataFileEntry, Index, TensorEntry, dtype_name, span_bytes
from .stores.local import LocalStore

DEFAULT_MAX_FILE_SIZE = 4 << 30
# Regions are written in batches, one native call each: small tensors (MoE experts) cost
# no system call and no Python I/O each.
_BATCH_BYTES = 64 << 20
_BATCH_REGIONS = 4096
_OUR_DATA_FILE = re.compile(r"^weights-[0-9a-f]{8}-\d{5}\.flash$")
_OUR_TEMP_INDEX = re.compile(r"^" + re.escape(INDEX_FILENAME) + r"\.tmp-[0-9a-f]{8}$")
log = logging.getLogger("flashtensors")


class CheckpointWriter:
    """Writes a flash checkpoint tensor by tensor; commits atomically on :meth:`commit`.

    Use it to stream a model too large to hold twice in memory (``save_dict`` is built
    on it). Tensors passed to one :meth:`write` call that share storage are stored
    once and load back sharing storage.

    Args:
        path: the checkpoint directory (created if missing; it may hold other files,
            such as a model's config.json).
        overwrite: replace a flash checkpoint already in ``path``; without it, an
            existing checkpoint raises FlashError.
        metadata: string-to-string pairs stored in the index.
        max_file_size: data files roll over at about this many bytes.

    Example:
        >>> with CheckpointWriter("/models/m") as w:
        ...     for shard in shards:
        ...         w.write(shard)        # commits when the block ends without error
    """

    def __init__(self, path, *, overwrite: bool = False, metadata: dict | None = None,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE):
        self.path = Path(path)
        self.metadata = _check_metadata(metadata)
        self.max_file_size = max_file_size
        self._save_id = secrets.token_hex(4)
        self._files: list = []  # DataFileEntry of files already closed
        self._tensors: dict = {}
        self._out = None  # the data file being written
        self._out_size = 0  # including the regions still pending
        self._pending: list = []  # host regions not yet written (kept alive until then)
        self._pending_crcs: list = []  # (pending region, offset, length, then the tensor's entry fields)
        self._pending_bytes = 0
        self._done = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FlashError(f"{self.path}: cannot create the checkpoint directory: {e.strerror}") from None
        self._lock = _DirectoryLock(self.path)
        try:
            if (self.path / INDEX_FILENAME).exists() and not overwrite:
                raise FlashError(f"{self.path}: a flash checkpoint is already there; "
                                 "pass overwrite=True to replace it")
            _remove_debris(self.path)
        except BaseException:
            self._lock.release()
            raise

    def write(self, tensors) -> None:
        """Appends ``tensors`` (a mapping of name to torch.Tensor) to the checkpoint."""
        self._check_open()
        try:
            for group in _storage_groups(tensors, self._tensors):
                self._write_group(group)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> Index:
        """Makes the checkpoint visible: fsyncs data, atomically replaces the index,
        then removes the previous checkpoint's data files. Returns the new index."""
        self._check_open()
        try:
            self._close_data_file()
            index = Index(files=self._files, tensors=self._tensors, metadata=self.metadata)
            old = _referenced_files(self.path)
            _atomic_write(self.path / INDEX_FILENAME, index_json(index).encode("utf-8"), self._save_id)
        except BaseException:
            self.abort()
            raise
        # From here on the new checkpoint is the checkpoint: nothing may delete its files.
        self._done = True
        try:
            fsync_dir(self.path)  # make the rename durable before the old files go
            for name in (old or set()) - {f.name for f in self._files}:
                unlink_quietly(self.path / name)
        finally:
            self._lock.release()
        return index

    def abort(self) -> None:
        """Discards everything written so far; the previous checkpoint stays as it was."""
        if self._done:
            return
        self._done = True
        if self._out is not None:
            self._out.close()
            self._out = None
        for i in range(len(self._files) + 1):
            unlink_quietly(self.path / self._file_name(i))
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # -- internals --------------------------------------------------------------------

    def _check_open(self):
        if self._done:
            raise FlashError(f"{self.path}: this writer has already committed or aborted")

    def _file_name(self, number: int) -> str:
        return f"weights-{self._save_id}-{number:05d}{DATA_SUFFIX}"

    def _write_group(self, group) -> None:
        region, members = group
        nbytes = region.numel()
        if self._out is not None and self._out_size > 0 and self._out_size + nbytes > self.max_file_size:
            self._close_data_file()
        if self._out is None:
            self._out = open(self.path / self._file_name(len(self._files)), "xb", buffering=0)
            self._out_size = 0
        base = self._out_size
        host = region.cpu() if region.device.type != "cpu" else region
        self._pending.append(host)
        self._out_size += nbytes + -nbytes % ALIGNMENT
        for name, tensor, rel, strides in members:
            shape = tuple(tensor.shape)
            length = span_bytes(shape, strides, tensor.element_size())
            self._tensors[name] = None  # holds the name's place; the entry comes with its checksum (_flush)
            self._pending_crcs.append((len(self._pending) - 1, rel, length, name, dtype_name(tensor.dtype), shape,
                                       len(self._files), base + rel, strides))
        self._pending_bytes += nbytes
        if self._pending_bytes >= _BATCH_BYTES or len(self._pending) >= _BATCH_REGIONS:
            self._flush()

    def _flush(self) -> None:
        """Writes the pending regions (padded) in one native call, and fills in the
        checksums of their tensors."""
        if not self._pending:
            return
        crcs = _native.module().write_regions(
            self._out.fileno(), [(t.data_ptr(), t.numel()) for t in self._pending],
            [(i, rel, length) for i, rel, length, *_ in self._pending_crcs], ALIGNMENT)
        for (_, _, length, name, dtype, shape, file, offset, strides), crc in zip(self._pending_crcs, crcs):
            self._tensors[name] = TensorEntry(name=name, dtype=dtype, shape=shape, file=file, offset=offset,
                                              length=length, crc32c=crc, strides=strides)
        self._pending, self._pending_crcs, self._pending_bytes = [], [], 0

    def _close_data_file(self):
        if self._out is None:
            return
        self._flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._out = None
        self._files.append(DataFileEntry(self._file_name(len(self._files)), self._out_size))


def _storage_groups(tensors, already: dict):
    """Yields (region, members) per stored region: ``region`` is a 1-D uint8 tensor of the
    bytes to store, ``members`` lists (name, tensor, byte offset in region, strides)."""
    import torch

    if not hasattr(tensors, "items"):
        raise FlashError(f"expected a mapping of names to tensors, got {type(tensors).__name__}")
    groups: dict = {}
    order: list = []
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise FlashError(f"tensor names must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise FlashError(f"value for {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if name in already or name in groups:
            raise FlashError(f"tensor {name!r} written twice")
        if tensor.layout != torch.strided or tensor.device.type == "meta":
            raise FlashError(f"tensor {name!r}: only dense tensors with data can be saved "
                             f"(layout {tensor.layout}, device {tensor.device})")
        dtype_name(tensor.dtype)  # unsupported dtypes fail here, before any byte is written
        tensor = tensor.detach()
        if tensor.is_conj() or tensor.is_neg():
            # Lazy conjugate/negative views: their storage holds the unconjugated values.
            tensor = tensor.resolve_conj().resolve_neg()
        ptr = tensor.untyped_storage().data_ptr()
        key = (tensor.device, ptr) if ptr and tensor.numel() else ("own", name)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((name, tensor))
    for key in order:
        yield _region_of(groups[key])


def _region_of(members):
    import torch

    if len(members) == 1:
        name, tensor = members[0]
        data = tensor.contiguous().reshape(-1).view(torch.uint8) if tensor.numel() else \
            torch.empty(0, dtype=torch.uint8, device=tensor.device)
        return data, [(name, tensor, 0, None)]
    # Several views of one storage: store the byte span covering them all, once.
    spans = []
    for _, t in members:
        start = t.storage_offset() * t.element_size()
        spans.append((start, start + span_bytes(tuple(t.shape), tuple(t.stride()), t.element_size())))
    lo = min(s for s, _ in spans) // 16 * 16  # keep every member aligned to its item size
    hi = max(e for _, e in spans)
    storage = members[0][1].untyped_storage()
    region = torch.empty(0, dtype=torch.uint8, device=members[0][1].device).set_(storage, lo, (hi - lo,), (1,))
    out = []
    for (name, t), (start, _) in zip(members, spans):
        strides = None if t.is_contiguous() else tuple(t.stride())
        out.append((name, t, start - lo, strides))
    return region, out


def _check_metadata(metadata):
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FlashError(f"metadata must map strings to strings; got {k!r}: {v!r}")
    return metadata


def _referenced_files(path: Path):
    """Data files named by the committed index: an empty set when there is no index,
    None when there is one this version cannot read (then nothing may be deleted)."""
    try:
        found = FLASH.find(LocalStore(os.fspath(path)))
    except FlashError:
        return None
    return set() if found is None else {f.name for f in found.index.files}


def _remove_debris(path: Path) -> None:
    """Removes data files and temporary indexes that no committed index refers to:
    leftovers of a save that failed or was killed."""
    keep = _referenced_files(path)
    if keep is None:
        log.warning("%s: the index there cannot be read; leaving its files alone", path)
        return
    for entry in os.scandir(path):
        if (_OUR_DATA_FILE.match(entry.name) and entry.name not in keep) or _OUR_TEMP_INDEX.match(entry.name):
            unlink_quietly(Path(entry.path))


def _atomic_write(target: Path, data: bytes, tag: str) -> None:
    tmp = target.with_name(f"{target.name}.tmp-{tag}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        unlink_quietly(tmp)
        raise


class _DirectoryLock:
    """An exclusive flock on the checkpoint directory itself: saves into one directory
    take turns, and no lock file is left behind. A writer dropped without commit or
    abort releases it when garbage collected."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another save into this directory to finish", path)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.release()

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
