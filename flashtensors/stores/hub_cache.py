"""The Hugging Face Hub's cache as the local tier of Hub locations: files found there are
read from the disk, the others are written there as a load streams them (by the native
reader's FileTee copies, flashtensors/stores/tier.py CachedLoad), laid out as huggingface_hub lays
them out, so that huggingface_hub, transformers and vLLM then find the model downloaded::

    <cache>/models--org--name/blobs/<etag>                          a file's bytes, named by its ETag
    <cache>/models--org--name/snapshots/<commit>/<file>             -> ../../blobs/<etag> (relative link)
    <cache>/models--org--name/refs/<revision>                       the commit a branch or tag named
    <cache>/.locks/models--org--name/<etag>.lock                    huggingface_hub's lock of that blob

The ETag of a file is the Hub's: the sha256 of a file kept in LFS (weights), the git blob ID
of another. A copy is written to ``blobs/<etag>.<pid>-<random>.part`` and committed only
after the load and its checks succeeded: flushed to the disk, renamed to its blob, then
linked from the snapshot, then the ref written, each step made durable before the next, so
a crash leaves at worst a part file (removed by the next load) or a blob without a link,
never a blob of other bytes than its name says nor a link to a missing blob.
``trees/<commit>.json``, huggingface_hub's listing of a whole commit, is left to it.

Example:
    >>> cache = HubCache("/root/.cache/huggingface/hub", "org/name")    # doctest: +SKIP
    >>> cache.commit_of("main")
    '0123456789abcdef0123456789abcdef01234567'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

from .. import _native
from ..files import fsync_dir, unlink_quietly
from .tier import discard_copy, part_path, remove_stale_parts

log = logging.getLogger("flashtensors")

COMMIT = re.compile(r"[0-9a-f]{40}")


class HubCache:
    """The part of the Hub cache at ``root`` that holds model repo ``repo_id``."""

    def __init__(self, root: str, repo_id: str):
        from huggingface_hub.file_download import repo_folder_name

        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        folder = repo_folder_name(repo_id=repo_id, repo_type="model")
        self.repo_id = repo_id
        self.dir = os.path.join(self.root, folder)
        self.locks = os.path.join(self.root, ".locks", folder)

    def commit_of(self, revision: str) -> str | None:
        """The commit ``revision`` named when it was cached (``refs/``), or ``revision``
        itself if it is a commit with a snapshot here; None if the cache does not know it."""
        if COMMIT.fullmatch(revision):
            return revision if os.path.isdir(self.snapshot(revision)) else None
        try:
            with open(os.path.join(self.dir, "refs", revision)) as f:
                commit = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return commit if COMMIT.fullmatch(commit) and os.path.isdir(self.snapshot(commit)) else None

    def snapshot(self, commit: str) -> str:
        return os.path.join(self.dir, "snapshots", commit)

    def blob(self, etag: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z_-]+", etag):
            raise ValueError(f"not a blob name: {etag!r}")
        return os.path.join(self.dir, "blobs", etag)


class HubTier:
    """The local tier (the interface of flashtensors/stores/tier.py LocalTier) of one Hub
    store (flashtensors/stores/hub.py) in ``cache``: its commit's snapshot.

    Example:
        >>> tier = HubTier(HubCache(root, "org/name"), store)            # doctest: +SKIP
        >>> tier.find("model.safetensors", store.stat("model.safetensors"))
        '/root/.cache/huggingface/hub/models--org--name/snapshots/0123.../model.safetensors'
    """

    def __init__(self, cache: HubCache, store):
        self.cache = cache
        self.store = store
        self.dir = cache.snapshot(store.commit)
        self._small: dict = {}  # name -> (bytes, ObjectInfo): whole files read, kept with the load's copies

    def remember(self, name: str, body: bytes, info) -> None:
        """Keeps ``body``, the whole of file ``name`` (an index, a config), to be written
        with the load's copies (:meth:`commit`) if its bytes are the ones its ETag names."""
        if info is not None and info.etag and len(body) == info.size and names_bytes(info.etag, body):
            self._small[name] = (body, info)

    def keep(self, name: str, body: bytes, info) -> None:
        """Writes ``body`` (the whole of file ``name``, checked against its ETag) into the
        cache now."""
        if not names_bytes(info.etag, body):
            raise ValueError(f"the bytes of {name} are not those its ETag {info.etag} names")
        blob = self.cache.blob(info.etag)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        part = part_path(blob)
        try:
            with open(part, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            with self._locked(info.etag):
                os.replace(part, blob)
                fsync_dir(os.path.dirname(blob))
                _link(blob, self.path(name))
        finally:
            unlink_quietly(part)
        self._record_ref()

    def path(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a file name of a repository: {name!r}")
        return os.path.join(self.dir, *parts)

    def find(self, name: str, info) -> str | None:
        """The snapshot's file ``name`` if its blob is the object ``info`` describes (its
        size; its ETag names it), linking a blob another snapshot brought; else None."""
        if info is None or not info.etag or info.size is None:
            return None
        try:
            link, blob = self.path(name), self.cache.blob(info.etag)
            if os.stat(blob).st_size != info.size:
                return None
            if os.path.realpath(link) != os.path.realpath(blob):
                with self._locked(info.etag):
                    _link(blob, link)
            return link
        except (OSError, ValueError):
            return None

    def start(self, name: str, size: int):
        """A native FileTee writing a new part file for file ``name`` (``size`` bytes), or
        None where none can be made (the reason is logged: the load goes on)."""
        try:
            blob = self.cache.blob(self.store.stat(name).etag)
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            remove_stale_parts(os.path.dirname(blob), os.path.basename(blob))
            return _native.module().FileTee(part_path(blob), size)
        except (OSError, ValueError, AttributeError) as e:
            log.warning("not keeping %s in the Hub cache: %s", self.store.describe(name), e)
            return None

    def commit(self, tee, name: str, info) -> bool:
        """Makes ``tee``'s file, every byte of it written, the blob of ``name``, linked from
        the snapshot, and records the revision's commit. False (the part file removed, the
        reason logged) if that fails."""
        try:
            blob, link = self.cache.blob(info.etag), self.path(name)
            tee.close(True)
            with self._locked(info.etag):
                if _size(blob) == info.size:  # another load committed the same bytes meanwhile
                    unlink_quietly(tee.path)
                else:
                    os.replace(tee.path, blob)
                fsync_dir(os.path.dirname(blob))
                _link(blob, link)
            self._record_ref()
            self._keep_small()
            return True
        except (OSError, ValueError) as e:
            log.warning("not keeping %s in the Hub cache: %s", self.store.describe(name), e)
            self.discard(tee)
            return False

    def discard(self, tee) -> None:
        discard_copy(tee)

    def _keep_small(self) -> None:
        """The whole files the load read (:meth:`remember`), now that its copies are kept."""
        small, self._small = self._small, {}
        for name, (body, info) in small.items():
            try:
                if self.find(name, info) is None:
                    self.keep(name, body, info)
            except (OSError, ValueError) as e:
                log.warning("not keeping %s in the Hub cache: %s", self.store.describe(name), e)

    def _record_ref(self) -> None:
        """``refs/<revision>`` names the commit (a branch or tag; a commit needs none)."""
        revision, commit = self.store.revision, self.store.commit
        if revision == commit:
            return
        ref = os.path.join(self.cache.dir, "refs", *revision.split("/"))
        try:
            with open(ref) as f:
                if f.read() == commit:
                    return
        except OSError:
            pass
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        tmp = part_path(ref)
        with open(tmp, "w") as f:
            f.write(commit)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ref)

    def _locked(self, etag: str):
        """huggingface_hub's own lock of a blob (its downloads of the same blob wait on it)."""
        from huggingface_hub.utils import WeakFileLock

        os.makedirs(self.cache.locks, exist_ok=True)
        return WeakFileLock(os.path.join(self.cache.locks, f"{etag}.lock"))


def names_bytes(etag: str, body: bytes) -> bool:
    """Whether ``etag``, as the Hub names a file, is the one of ``body``: its sha256 (LFS),
    or its git blob ID.

    Example:
        >>> names_bytes("b45ef6fec89518d314f546fd6c3025367b721684", b"Hello, World!")
        True
    """
    if len(etag) == 64:
        return hashlib.sha256(body).hexdigest() == etag
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest() == etag


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _link(blob: str, link: str) -> None:
    """``link``, a relative symbolic link to ``blob``, replacing whatever was there at once."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = part_path(link)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), tmp)
    os.replace(tmp, link)
    fsync_dir(os.path.dirname(link))
