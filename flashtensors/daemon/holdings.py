"""The daemon's memory: whole checkpoints held in sealed shared-memory files, under a
byte budget, evicted least-recently-used first.

Each cached checkpoint is one memfd holding its data files back to back (each at a
4096-aligned offset, as the files' sizes are multiples of 4096), filled by the native
core's parallel reads, then sealed against writes, shrinking and growing. Clients
receive the fd and map it copy-on-write, so a client can neither change the bytes
other clients see nor pull them from under them: an evicted checkpoint's memory is
freed when the last client mapping it lets go.

A checkpoint is identified by its index file's (inode, mtime_ns, size). Saves replace
the index atomically and never rewrite a data file in place, so a changed identity
means a new version: it is loaded afresh, never served stale.

Example:
    >>> holdings = Holdings(budget=8 << 30)
    >>> entry = holdings.acquire("/models/m")     # loads it on first use
    >>> try: ...                               # hand entry.fd to a client
    ... finally: holdings.release(entry)
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .. import _native
from ..checkpoint import open_checkpoint
from ..errors import FlashFormatError
from ..files import version_stamp
from ..formats import FLASH
from ..formats.flash import INDEX_FILENAME
from ..options import resolve_threads
from .protocol import DaemonError

log = logging.getLogger("flashtensors.daemon")

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
FILL_CHUNK_BYTES = 16 << 20
# How long a load waits for checkpoints being served to be let go before it is refused for room.
PIN_WAIT_S = 2.0


@dataclass(eq=False)
class Entry:
    """One cached checkpoint."""

    path: str  # real path of the checkpoint directory
    identity: tuple  # index_identity() of the checkpoint, taken before it was read
    index_bytes: bytes  # the index exactly as read, so clients see the version cached
    offsets: list  # where each data file starts in the memfd
    nbytes: int
    tensors: int
    fd: int
    seconds: float  # how long loading took
    pins: int = 0  # requests being served from it; never evicted while > 0
    served: int = 0  # requests served from it
    dead: bool = False  # evicted or stale; closed once unpinned
    last_used: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"path": self.path, "bytes": self.nbytes, "tensors": self.tensors, "served": self.served,
                "pinned": self.pins, "load_seconds": round(self.seconds, 4),
                "idle_seconds": round(time.time() - self.last_used, 1)}


def index_identity(path: str) -> tuple:
    """What identifies the checkpoint's current version: (device, inode, size, mtime_ns,
    ctime_ns) of its index and of every data file the index names, so that a data file
    replaced or rewritten in place is noticed too. FlashFormatError if it has no index."""
    try:
        own = version_stamp(os.path.join(path, INDEX_FILENAME))
    except OSError as e:
        raise FlashFormatError(f"{path}: no flash checkpoint here ({e.strerror})") from None
    try:
        files = tuple(version_stamp(p) for p in open_checkpoint(path, formats=[FLASH]).sources)
    except (OSError, FlashFormatError):
        files = ()  # the load that follows reports what is wrong
    return own, files


class Holdings:
    """Checkpoints in memory under ``budget`` bytes; thread-safe."""

    def __init__(self, budget: int, threads: int | None = None):
        if budget <= 0:
            raise ValueError("the memory budget must be positive")
        self.budget = budget
        self.threads = threads
        self.used = 0  # bytes held by memfds still open, plus reservations for loads under way
        self._entries: OrderedDict = OrderedDict()  # path -> Entry, least recently used first
        self._loading: set = set()
        self._cond = threading.Condition()

    def acquire(self, path: str) -> Entry:
        """The entry for the checkpoint in directory ``path`` (a real path), loaded if it
        is not cached or changed on disk, and pinned: call :meth:`release` when done."""
        for attempt in range(3):
            identity = index_identity(path)
            with self._cond:
                if path in self._loading:
                    while path in self._loading:
                        self._cond.wait()
                    identity = index_identity(path)  # the other load may have read a newer version
                entry = self._entries.get(path)
                if entry is not None:
                    if entry.identity == identity:
                        return self._pin(entry)
                    self._drop(entry, "changed on disk")
                self._loading.add(path)
            entry = None
            try:
                entry = self._load(path)
            except FlashFormatError:
                # A save committed while we read: its files replaced the ones our index named.
                if attempt == 2 or index_identity(path) == identity:
                    raise
            finally:
                with self._cond:
                    self._loading.discard(path)
                    if entry is not None:
                        self._entries[path] = entry
                        self._pin(entry)
                    self._cond.notify_all()
            if entry is not None:
                return entry
        raise AssertionError("unreachable")

    def release(self, entry: Entry) -> None:
        with self._cond:
            entry.pins -= 1
            if entry.dead and entry.pins == 0:
                self._close(entry)
            self._cond.notify_all()  # a load waiting for room may go on

    def evict(self, path: str) -> bool:
        """Drops ``path`` from the cache (once no request uses it). Returns whether it was cached."""
        with self._cond:
            entry = self._entries.get(path)
            if entry is not None:
                self._drop(entry, "evicted on request")
            return entry is not None

    def describe(self) -> dict:
        with self._cond:
            return {"budget": self.budget, "used": self.used,
                    "entries": [e.describe() for e in reversed(self._entries.values())]}

    def close(self) -> None:
        with self._cond:
            for entry in list(self._entries.values()):
                self._drop(entry, "daemon stopping", quiet=True)

    # -- under self._cond --

    def _pin(self, entry: Entry) -> Entry:
        entry.pins += 1
        entry.served += 1
        entry.last_used = time.time()
        self._entries.move_to_end(entry.path)
        return entry

    def _drop(self, entry: Entry, why: str, quiet: bool = False) -> None:
        self._entries.pop(entry.path, None)
        entry.dead = True
        if not quiet:
            log.info("dropped %s (%.2f GB, served %d times): %s", entry.path, entry.nbytes / 1e9,
                     entry.served, why)
        if entry.pins == 0:
            self._close(entry)

    def _close(self, entry: Entry) -> None:
        if entry.fd >= 0:
            os.close(entry.fd)
            entry.fd = -1
            self.used -= entry.nbytes

    def _make_room(self, nbytes: int, path: str) -> None:
        if nbytes > self.budget:
            raise DaemonError(f"{path}: {nbytes / 1e9:.2f} GB does not fit the cache's budget "
                             f"of {self.budget / 1e9:.2f} GB")
        # The least recently used checkpoints go first. One still being served (a client that
        # just got its reply lets go a moment later) is waited for a little, so that the order
        # of use decides what goes, not the timing of other requests; past that, what is free goes.
        deadline = time.monotonic() + PIN_WAIT_S
        while True:
            victims, freed = [], 0
            for entry in self._entries.values():
                if self.used - freed + nbytes <= self.budget:
                    break
                victims.append(entry)
                freed += entry.nbytes
            left = deadline - time.monotonic()
            if not any(v.pins for v in victims) or left <= 0:
                break
            self._cond.wait(left)
        for entry in list(self._entries.values()):
            if self.used + nbytes <= self.budget:
                break
            if entry.pins == 0:
                self._drop(entry, f"evicted (least recently used) to make room for {path}")
        if self.used + nbytes > self.budget:
            raise DaemonError(f"{path}: no room in the cache: the memory is held by checkpoints being served")
        self.used += nbytes

    # -- loading --

    def _load(self, path: str) -> Entry:
        started = time.perf_counter()
        identity = index_identity(path)  # before reading: a save in between only causes a reload
        ckpt = open_checkpoint(path, formats=[FLASH])
        index, paths, index_bytes = ckpt.index, ckpt.sources, ckpt.found.small[INDEX_FILENAME]
        offsets, nbytes = [], 0
        for f in index.files:
            offsets.append(nbytes)
            nbytes += f.size
        with self._cond:
            self._make_room(nbytes, path)
        try:
            fd = _fill(paths, index.files, offsets, nbytes, self.threads)
        except (OSError, RuntimeError) as e:  # no memory, no file descriptors, ...
            with self._cond:
                self.used -= nbytes
            raise DaemonError(f"{path}: cannot hold the checkpoint in memory: {e}") from None
        except BaseException:
            with self._cond:
                self.used -= nbytes
            raise
        seconds = time.perf_counter() - started
        log.info("loaded %s: %d tensors, %.2f GB in %.3f s (%.2f GB/s); %.2f of %.2f GB used", path,
                 len(index.tensors), nbytes / 1e9, seconds, nbytes / 1e9 / max(seconds, 1e-9),
                 self.used / 1e9, self.budget / 1e9)
        return Entry(path=path, identity=identity, index_bytes=index_bytes, offsets=offsets, nbytes=nbytes,
                     tensors=len(index.tensors), fd=fd, seconds=seconds)


def _fill(paths: list, files: list, offsets: list, nbytes: int, threads: int | None) -> int:
    """A sealed memfd holding every data file at its offset, read by the native core."""
    import torch

    fd = os.memfd_create("flashtensors-cache", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, nbytes)
        if nbytes:
            mapping = torch.UntypedStorage.from_file(f"/proc/self/fd/{fd}", shared=True, nbytes=nbytes)
            base = mapping.data_ptr()
            ops = [(i, 0, f.size, base + off, -1) for i, (f, off) in enumerate(zip(files, offsets)) if f.size]
            try:
                _native.module().execute_plan(paths, ops, resolve_threads(threads), FILL_CHUNK_BYTES, "auto")
            except OSError as e:
                raise FlashFormatError(f"reading {paths[0] if paths else ''} into the cache failed: {e}") from None
            del mapping  # unmapped: a writable shared mapping would block the write seal
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return fd
    except BaseException:
        os.close(fd)
        raise
