"""The local tier (``cache_dir=``): local copies of a remote checkpoint's data files,
the store that reads through them, and the copies one load writes.

Three parts, in this order below:

- :class:`LocalTier`, the files: where the local copy of a remote checkpoint lives under
  the cache directory, how a copy is found (same size and ETag as the remote object), and
  how a new copy is committed (a ``.part`` file renamed once every byte of it was written,
  then a sidecar recording the object's identity).
- :class:`TieredStore`, the store: an object whose local copy has the remote object's
  size and ETag is read from that copy (its header, and by the native reader its bytes:
  ``data_url`` is then the copy's path); the others are read from the remote store.
- :class:`CachedLoad`, one load: which data files it reads from their local copies, which
  it streams from the network while the native reader also writes them to new local
  copies, and, once the load succeeded, the commit of those copies.

Layout, for a checkpoint at ``http://host/models/m`` and ``cache_dir=/cache``::

    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash            the object's bytes
    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash.meta.json  {"url": ..., "size": ..., "etag": ...}
    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash.4242-9f1c.part   being written (never read)

A data file counts as cached only while its sidecar names the remote object's current
size and ETag and the file has that size. Commits and look-ups hold a lock on the
directory, so a copy and its sidecar are replaced together. Objects without an ETag are
never cached (nothing would tell a changed object from an unchanged one).

A copy is kept only when every byte of its file was written. A load writes copies of
the data files it reads whole (every tensor of the file loaded): the bytes the load
itself does not need (a safetensors header, alignment padding) are fetched after it, in
one native call. Files a load reads only some tensors of (``load_into`` of a subset) are
streamed without a copy: fetching the rest would turn a small load into a download.

Every byte of a copy comes from reads pinned to the object's version seen when the
checkpoint was opened (stores/versions.py: If-Match, and the answers' ETags checked), and
the copy is committed under that version's ETag: an object replaced mid-load fails the
load (or the fetch of the remaining bytes), so no copy ever mixes two versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
from contextlib import contextmanager

from .. import _native
from ..errors import FlashFormatError
from ..files import fsync_dir, unlink_quietly
from .api import ObjectInfo
from .local import LocalStore

log = logging.getLogger("flashtensors")


META_SUFFIX = ".meta.json"
PART_SUFFIX = ".part"
LOCK_NAME = ".lock"


class LocalTier:
    """The local copy of the remote checkpoint whose objects are in ``store`` (one
    directory of ``cache_dir`` per store location).

    Example:
        >>> tier = LocalTier("/cache", store)                        # doctest: +SKIP
        >>> tier.find("model-00000.flash", ObjectInfo(4096, '"abc"'))
        '/cache/m-1f3a9c0d2b4e6f70/model-00000.flash'
    """

    def __init__(self, cache_dir: str, store):
        self.store = store
        self.dir = os.path.join(cache_dir, directory_name(store.identity()))

    def path(self, name: str) -> str:
        if "/" in name or name.startswith(".") or not name:
            raise ValueError(f"not a plain file name: {name!r}")
        return os.path.join(self.dir, name)

    def find(self, name: str, info: ObjectInfo) -> str | None:
        """The local copy of object ``name`` if it is the object ``info`` describes, else None."""
        if info is None or not info.etag or info.size is None:
            return None
        path = self.path(name)
        try:
            with self._locked(fcntl.LOCK_SH, create=False):
                with open(path + META_SUFFIX, "rb") as f:
                    meta = json.loads(f.read())
                if meta.get("etag") != info.etag or meta.get("size") != info.size:
                    return None
                return path if os.stat(path).st_size == info.size else None
        except (OSError, ValueError, AttributeError):
            return None

    def start(self, name: str, size: int):
        """A native FileTee writing a new ``.part`` file for object ``name`` (``size``
        bytes), or None where none can be made (the reason is logged: the load goes on)."""
        try:
            os.makedirs(self.dir, exist_ok=True)
            remove_stale_parts(self.dir, name)
            return _native.module().FileTee(part_path(self.path(name)), size)
        except (OSError, ValueError) as e:
            log.warning("not keeping a local copy of %s: %s", self.store.describe(name), e)
            return None

    def commit(self, tee, name: str, info: ObjectInfo) -> bool:
        """Makes ``tee``'s file, every byte of it written, the local copy of object
        ``name``: flushed to the disk, renamed into place, then its sidecar written.
        False (the part file removed, the reason logged) if that fails."""
        path = self.path(name)
        try:
            tee.close(True)
            with self._locked(fcntl.LOCK_EX, create=True):
                unlink_quietly(path + META_SUFFIX)  # never a sidecar naming an object the file no longer is
                os.replace(tee.path, path)
                meta = json.dumps({"url": self.store.describe(name), "size": info.size, "etag": info.etag})
                tmp = f"{path}{META_SUFFIX}.{os.getpid()}{PART_SUFFIX}"
                with open(tmp, "w") as f:
                    f.write(meta)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path + META_SUFFIX)
                fsync_dir(self.dir)
            return True
        except OSError as e:
            log.warning("not keeping a local copy of %s: %s", self.store.describe(name), e)
            self.discard(tee)
            return False

    def discard(self, tee) -> None:
        discard_copy(tee)

    @contextmanager
    def _locked(self, how: int, create: bool):
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(os.path.join(self.dir, LOCK_NAME), flags, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)


def part_path(path: str) -> str:
    """A new part file's name for the file at ``path``, unique to this process and call."""
    return f"{path}.{os.getpid()}-{secrets.token_hex(4)}{PART_SUFFIX}"


def remove_stale_parts(directory: str, name: str) -> None:
    """Part files of ``name`` in ``directory`` left by processes of this machine that died mid-load."""
    pattern = re.compile(re.escape(name) + r"\.(\d+)-[0-9a-f]+" + re.escape(PART_SUFFIX))
    for entry in os.listdir(directory):
        m = pattern.fullmatch(entry)
        if m and not _alive(int(m[1])):
            unlink_quietly(os.path.join(directory, entry))


def discard_copy(tee) -> None:
    """Closes copy ``tee`` (a native FileTee) and removes its part file: a failed or
    partial load keeps nothing."""
    try:
        tee.close(False)
    except OSError:
        pass
    unlink_quietly(tee.path)


def directory_name(identity: str) -> str:
    """The cache directory's name for a store location: its last path part (for people
    reading the cache) and a hash of the whole (so that locations never collide).

    Example:
        >>> directory_name("http://127.0.0.1:8080/models/m")[:2]
        'm-'
    """
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", identity.rstrip("/").rsplit("/", 1)[-1])[:60].lstrip(".") or "root"
    return f"{tail}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True



class TieredStore:
    """``remote`` (a store) with the local tier in ``cache_dir``.

    Example:
        >>> store = TieredStore(open_http("http://h/m", 30), "/cache")   # doctest: +SKIP
        >>> store.data_url("model-00000.flash")                          # a copy, or the URL
        '/cache/m-1f3a9c0d2b4e6f70/model-00000.flash'
    """

    local = False

    def __init__(self, remote, cache_dir: str | None = None, tier=None):
        self.remote = remote
        self.tier = tier or LocalTier(cache_dir, remote)  # another tier: the Hub's cache (stores/hub_cache.py)
        self.copies = LocalStore(self.tier.dir)
        self._objects: dict = {}
        self._copies: dict = {}

    @property
    def listable(self) -> bool:
        return self.remote.listable

    @property
    def single(self):
        return self.remote.single

    @property
    def timeout(self) -> float:
        return self.remote.timeout

    def describe(self, name: str) -> str:
        return self.remote.describe(name)

    def identity(self) -> str:
        return self.remote.identity()

    def list(self) -> list:
        return self.remote.list()

    def missing(self, name: str, message: str):
        return self.remote.missing(name, message)

    def stat(self, name: str) -> ObjectInfo | None:
        """The remote object's identity (asked once per store: the load is pinned to it)."""
        if name not in self._objects:
            self._objects[name] = self.remote.stat(name)
        return self._objects[name]

    def copy(self, name: str) -> str | None:
        """The path of the up-to-date local copy of object ``name``, or None (looked up
        once per store, as its identity is: the load is pinned to what it saw at opening)."""
        if name not in self._copies:
            info = self.stat(name)
            self._copies[name] = self.tier.find(name, info) if info is not None else None
        return self._copies[name]

    def is_here(self, name: str) -> bool:
        return self.copy(name) is not None

    def data_url(self, name: str) -> str:
        return self.copy(name) or self.remote.data_url(name)

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False,
             limit: int | None = None):
        """From the local copy when it is up to date (a damaged copy: from the remote)."""
        bounded = {} if limit is None else {"limit": limit}
        if self.copy(name) is not None:
            try:
                body, _ = self.copies.read(name, start, end, **bounded)
                return body, self.stat(name)
            except FlashFormatError:
                pass
        got = self.remote.read(name, start, end, missing_ok=missing_ok, **bounded)
        remember = getattr(self.tier, "remember", None)  # a tier that keeps whole small files too (the Hub's cache)
        if got is not None and start is None and end is None and remember is not None:
            remember(name, *got)
        return got



# Gaps closer than this are fetched as one range (re-reading the bytes between them).
MERGE_GAPS_BYTES = 1 << 20
# Gap bytes fetched per native call (the scratch buffer they land in).
FILL_BATCH_BYTES = 64 << 20


class CachedLoad:
    """What one load of ``ckpt`` (opened through a TieredStore: flashtensors/stores/tier.py)
    writes to the local tier: ``.tees``, per data file a native FileTee or None (None when
    it writes nothing).

    ``wanted``: the names of the tensors the load reads (None: all).

    Example:
        >>> c = CachedLoad(open_checkpoint(url, cache_dir="/cache"), None)    # doctest: +SKIP
        >>> execute_plan(ckpt.sources, ops, 8, CHUNK_BYTES, tees=c.tees)      # doctest: +SKIP
        >>> c.commit(threads=8, timeout=30)                                   # doctest: +SKIP
    """

    def __init__(self, ckpt, wanted=None):
        self.ckpt = ckpt
        self.tier = ckpt.store.tier
        self.tees = None
        whole = whole_files(ckpt.index, wanted)
        tees = [None] * len(ckpt.names)
        for f, (name, info, here) in enumerate(zip(ckpt.names, ckpt.objects, ckpt.here)):
            if not here and f in whole and info.etag and info.size:
                tees[f] = self.tier.start(name, info.size)
        if any(tees):
            self.tees = tees

    def commit(self, threads: int, timeout: float, connections: int = 0) -> int:
        """After a successful load: fetches the bytes the load did not read of each file
        being copied (``connections`` requests in flight, 0 for the default), then commits
        every complete copy. Problems are logged, never raised (the load itself
        succeeded). Returns the number of files committed."""
        kept = 0
        for f, tee in enumerate(self.tees or []):
            if tee is None:
                continue
            name = self.ckpt.names[f]
            try:
                self._fill(f, tee, threads, timeout, connections)
            except OSError as e:  # the native RemoteError and IoError are OSErrors
                log.warning("not keeping a local copy of %s: fetching its remaining bytes failed: %s",
                            self.ckpt.store.describe(name), e)
            problem = tee.error() or ("bytes missing" if tee.missing() else "")
            if problem:
                log.warning("not keeping a local copy of %s: %s", self.ckpt.store.describe(name), problem)
                self.tier.discard(tee)
            elif self.tier.commit(tee, name, self.ckpt.objects[f]):
                kept += 1
        self.tees = None
        return kept

    def abort(self) -> None:
        """After a failed load: removes every part file (nothing partial is kept)."""
        for tee in self.tees or []:
            if tee is not None:
                self.tier.discard(tee)
        self.tees = None

    def _fill(self, f: int, tee, threads: int, timeout: float, connections: int) -> None:
        import numpy as np

        gaps = merge_gaps(tee.missing(), MERGE_GAPS_BYTES)
        url = self.ckpt.sources[f]
        for batch in batches(gaps, FILL_BATCH_BYTES):
            scratch = np.empty(sum(length for _, length in batch), dtype=np.uint8)
            ops, at = [], scratch.ctypes.data
            for offset, length in batch:
                ops.append((0, offset, length, at, -1))
                at += length
            _native.module().execute_plan([url], ops, threads, FILL_BATCH_BYTES, "auto", timeout, tees=[tee],
                                          connections=connections)


def whole_files(index, wanted) -> set:
    """Data files (by number) all of whose tensors are in ``wanted`` (all files for None).

    Example:
        >>> whole_files(flash.read_index("/models/m"), None)          # doctest: +SKIP
        {0}
    """
    files = set(range(len(index.files)))
    if wanted is None:
        return files
    for name, entry in index.tensors.items():
        if name not in wanted:
            files.discard(entry.file)
    return files


def merge_gaps(gaps, slack: int) -> list:
    """``(offset, length)`` ranges, sorted, with ranges less than ``slack`` bytes apart merged.

    Example:
        >>> merge_gaps([(0, 8), (100, 10), (5000, 1)], 1000)
        [(0, 110), (5000, 1)]
    """
    out = []
    for offset, length in gaps:
        if out and offset - (out[-1][0] + out[-1][1]) < slack:
            out[-1] = (out[-1][0], offset + length - out[-1][0])
        else:
            out.append((offset, length))
    return out


def batches(gaps, limit: int):
    """``gaps`` split into lists of at most ``limit`` bytes (a longer range alone, cut up).

    Example:
        >>> list(batches([(0, 5), (10, 5), (20, 12)], 10))
        [[(0, 5), (10, 5)], [(20, 10)], [(30, 2)]]
    """
    batch, size = [], 0
    for offset, length in gaps:
        while length:
            take = min(length, limit - size)
            batch.append((offset, take))
            size += take
            offset += take
            length -= take
            if size == limit:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
