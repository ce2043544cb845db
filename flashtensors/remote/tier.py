"""The local tier's files: where the local copy of a remote checkpoint lives under the
cache directory, how a copy is found (same size and ETag as the remote object), and how a
new copy is committed (a ``.part`` file renamed once every byte of it was written, then a
sidecar recording the object's identity).

Layout, for a checkpoint at ``http://host/models/m`` and ``cache_dir=/cache``::

    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash            the object's bytes
    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash.meta.json  {"url": ..., "size": ..., "etag": ...}
    /cache/m-1f3a9c0d2b4e6f70/model-00000.flash.4242-9f1c.part   being written (never read)

A data file counts as cached only while its sidecar names the remote object's current
size and ETag and the file has that size. Commits and look-ups hold a lock on the
directory, so a copy and its sidecar are replaced together. Objects without an ETag are
never cached (nothing would tell a changed object from an unchanged one).
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
from .store import ObjectInfo

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
                remove(path + META_SUFFIX)  # never a sidecar naming an object the file no longer is
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
        """Closes ``tee`` and removes its part file (a failed or partial load)."""
        try:
            tee.close(False)
        except OSError:
            pass
        remove(tee.path)

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
            remove(os.path.join(directory, entry))


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


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
