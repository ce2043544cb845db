"""The Hugging Face Hub as a store: ``hf://org/name``, ``hf://org/name@revision`` (a branch,
tag or commit) and, where no such local path exists, a bare repo ID ``org/name``.

Opening a Hub location asks the Hub's API once: the commit the revision names now (the
whole load is pinned to it: every URL names the commit, never the branch) and the files
with their sizes and ETags. The tensor bytes are read by the native reader from
``{endpoint}/{repo}/resolve/{commit}/{file}`` (the Hub answers 302 to its CDN); the small
parts (an index, the safetensors headers) by the Python client, from the same URLs. The
user's token (``HF_TOKEN``, else the file ``hf auth login`` keeps) is registered for the
endpoint's origin only: it never goes to the CDN host a redirect leads to. A 429 is waited
out as its ``Retry-After`` asks, within the load's timeout. The Hub's errors (no such
repository, revision or file; gated; unauthorized) are FlashRemoteErrors naming them.

The Hub's cache (``HF_HUB_CACHE``, or ``cache_dir=``) is the local tier of a Hub location
(hub_cache.py): files found there are read from the disk, the others are written there as
they stream. With ``HF_HUB_OFFLINE=1`` nothing is asked of the Hub: the snapshot the cache
holds for the revision is opened as a local directory.

huggingface_hub supplies the endpoint (``HF_ENDPOINT``), the cache's place, the offline
switch and the token; it never touches the bytes.

Example:
    >>> from flashtensors import flash
    >>> sd = flash.load_dict("Qwen/Qwen3-0.6B", "cpu")                     # doctest: +SKIP
    >>> sd = flash.load_dict("hf://Qwen/Qwen3-0.6B@main", {"": 0})          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass

from .. import _native
from ..errors import FlashError, FlashRemoteError
from . import http_client as http
from .api import ObjectInfo
from .deadline import Deadline
from .hub_cache import HubCache, HubTier
from .local import LocalStore

log = logging.getLogger("flashtensors")

PREFIX = "hf://"
DEFAULT_REVISION = "main"
# huggingface_hub's rule for repo IDs: two names of letters, digits, "_", "-" and ".", no "--" or "..".
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_REPO_ID = re.compile(f"{_NAME}/{_NAME}")
MAX_REPO_ID = 96


@dataclass(frozen=True)
class HubLocation:
    """A model repository and the revision asked for."""

    repo_id: str
    revision: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.revision}"


def is_repo_id(text) -> bool:
    """Whether ``text`` is written as a Hub repo ID ``org/name`` (whether or not a local
    path of that name exists: flashtensors/locations.py lets that one win).

    Example:
        >>> is_repo_id("Qwen/Qwen3-8B"), is_repo_id("./m"), is_repo_id("/models/m")
        (True, False, False)
    """
    return (isinstance(text, str) and len(text) <= MAX_REPO_ID and _REPO_ID.fullmatch(text) is not None
            and "--" not in text and ".." not in text and not text.endswith("."))


def parse_location(location: str) -> HubLocation:
    """The repository and revision of ``hf://org/name[@revision]`` or ``org/name``.

    Example:
        >>> parse_location("hf://org/name@v1.0")
        HubLocation(repo_id='org/name', revision='v1.0')
    """
    text = location[len(PREFIX):] if location.startswith(PREFIX) else location
    repo_id, at, revision = text.partition("@")
    repo_id = repo_id.rstrip("/")
    if not is_repo_id(repo_id) or (at and not revision):
        raise FlashError(f"{location}: not a Hugging Face Hub location (hf://org/name, hf://org/name@revision, "
                         "or org/name)")
    return HubLocation(repo_id, revision or DEFAULT_REVISION)


def open_hub(location: str, timeout: float, cache_dir: str | None = None):
    """The store of a Hub location, with the Hub's cache (``cache_dir``, else huggingface_hub's
    ``HF_HUB_CACHE``) as its local tier; with ``HF_HUB_OFFLINE=1``, the cached snapshot as a
    local directory.

    Raises FlashRemoteError when the Hub does not have the repository or revision, refuses
    access, or (offline) the cache holds no snapshot of it.
    """
    where = parse_location(location)
    try:
        return _open(where, timeout, cache_dir)
    except FlashRemoteError as e:
        if location.startswith(PREFIX):
            raise
        # A bare org/name was taken for a repo ID because no such local path exists: say both.
        raise FlashRemoteError(f"{location}: no such local file or directory, and as a Hub repo ID: {e}", e.status,
                               e.url) from None


def _open(where: HubLocation, timeout: float, cache_dir: str | None):
    from huggingface_hub import constants, get_token

    cache = HubCache(cache_dir or constants.HF_HUB_CACHE, where.repo_id)
    if constants.is_offline_mode():
        return _cached_snapshot(where, cache, "HF_HUB_OFFLINE is set")
    try:
        store = HubStore(constants.ENDPOINT, where, timeout, get_token())
    except FlashRemoteError as e:
        if e.status != 0 or cache.commit_of(where.revision) is None:
            raise
        # No answer from the Hub at all (no network): the cached snapshot, as huggingface_hub falls back to it.
        log.warning("%s: the Hub did not answer (%s); loading the snapshot in the Hub cache", where, e)
        return _cached_snapshot(where, cache, "the Hub did not answer")
    from .tier import TieredStore

    return TieredStore(store, tier=HubTier(cache, store))


def _cached_snapshot(where: HubLocation, cache: HubCache, why: str):
    commit = cache.commit_of(where.revision)
    if commit is None:
        raise FlashRemoteError(f"{where}: {why} and the Hub cache ({cache.root}) holds no snapshot of it: load it "
                               "once online, or unset HF_HUB_OFFLINE", 0, str(where))
    return SnapshotStore(cache, commit)


class SnapshotStore(LocalStore):
    """A snapshot of the Hub cache as a local directory, whose files are links to the
    repository's blobs (a flash index's data files may lead there, and nowhere else)."""

    def __init__(self, cache: HubCache, commit: str):
        super().__init__(cache.snapshot(commit))
        self.blobs = os.path.realpath(os.path.join(cache.dir, "blobs"))

    def check_inside(self, name: str) -> None:
        if os.path.dirname(os.path.realpath(self.describe(name))) != self.blobs:
            super().check_inside(name)


class HubStore:
    """The files of a model repository at the commit ``where.revision`` names when opened.

    Attributes:
        commit: that commit; ``revision``: as asked; ``files``: ObjectInfo (size, ETag as
            the Hub's cache names blobs) per file name.
    """

    listable = True
    local = False
    single = None

    def __init__(self, endpoint: str, where: HubLocation, timeout: float, token: str | None):
        self.endpoint = endpoint.rstrip("/")
        self.repo_id, self.revision = where.repo_id, where.revision
        self.timeout = timeout
        self.deadline = Deadline(timeout)  # every metadata request of this checkpoint
        self.token_sent = bool(token)
        if token:
            authorize(self.endpoint, token)
        self.commit, self.files = self._listing()

    def _listing(self) -> tuple:
        """``(commit, {file name: ObjectInfo})`` of the revision, from the Hub's API."""
        url = (f"{self.endpoint}/api/models/{self.repo_id}/revision/"
               f"{urllib.parse.quote(self.revision, safe='')}?blobs=true")
        try:
            body = http.request(url, timeout=self.deadline).body
        except FlashRemoteError as e:
            raise self._hub_error(e) from None
        try:
            info = json.loads(body)
            commit = info["sha"]
            files = {s["rfilename"]: _object_info(s) for s in info.get("siblings", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FlashRemoteError(f"{self.describe('')}: the Hub's answer to {http.shown(url)} is not the repository "
                                   "information expected", 0, http.shown(url)) from None
        if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise FlashRemoteError(f"{self.describe('')}: the Hub named no commit for it", 0, http.shown(url))
        return commit, files

    def describe(self, name: str) -> str:
        return f"{PREFIX}{self.repo_id}@{self.revision}/{name}"

    def identity(self) -> str:
        return f"{self.endpoint}/{self.repo_id}@{self.commit}"

    def data_url(self, name: str) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.commit}/{urllib.parse.quote(name)}"

    def is_here(self, name: str) -> bool:
        return False

    def stat(self, name: str) -> ObjectInfo | None:
        """From the listing: no request."""
        return self.files.get(name)

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False,
             limit: int = http.MAX_OBJECT_BYTES):
        """``(bytes, ObjectInfo)`` of bytes ``start``..``end`` (inclusive; all when None, at
        most ``limit``) of file ``name``, or None for a file the commit lacks when ``missing_ok``."""
        info = self.files.get(name)
        if info is None:
            if missing_ok:
                return None
            raise self.missing(name, "no such file")
        if start is not None and info.size and is_lfs(info):
            return self._read_natively(name, start, min(info.size - 1, end if end is not None else info.size - 1)), info
        try:
            r = http.request(self.data_url(name), start=start, end=end, timeout=self.deadline, limit=limit)
        except FlashRemoteError as e:
            raise self._hub_error(e, name) from None
        if info.size is not None and r.total_size not in (None, info.size):
            raise FlashRemoteError(f"{self.describe(name)}: the Hub lists {info.size} bytes, and {r.total_size} "
                                   f"were served (commit {self.commit})", 0, self.describe(name))
        return r.body, info

    def _read_natively(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` of LFS file ``name`` (a safetensors header), read by the
        native reader: the Hub's redirect to the CDN it resolves now is remembered for the
        rest of the load, so the tensor reads of the file ask the Hub nothing more."""
        import numpy as np

        scratch = np.empty(max(0, end + 1 - start), dtype=np.uint8)
        if not len(scratch):
            return b""
        native = _native.module()
        try:
            native.execute_plan([self.data_url(name)], [(0, start, len(scratch), scratch.ctypes.data, -1)], 1,
                                len(scratch), "auto", self.timeout, connections=1)
        except native.RemoteError as e:
            raise FlashRemoteError(f"{self.describe(name)}: {e}", e.status, e.url) from None
        self.deadline.progress()
        return scratch.tobytes()

    def list(self) -> list:
        """The files at the repository's top level (as a local directory is listed)."""
        return sorted(n for n in self.files if "/" not in n)

    def missing(self, name: str, message: str) -> FlashRemoteError:
        """The error for a file a checkpoint needs and the commit lacks."""
        where = self.describe(name).rstrip("/")
        return FlashRemoteError(f"{where}: {message} (commit {self.commit} of the repository)", 404, where)

    def _hub_error(self, e: FlashRemoteError, name: str = "") -> FlashRemoteError:
        """``e`` (an HTTP error of the Hub) said as the Hub means it (its ``X-Error-Code``)."""
        code = (getattr(e, "headers", None) or {}).get("X-Error-Code", "")
        where = self.describe(name).rstrip("/")
        if self.token_sent:
            access = "the token sent (HF_TOKEN, or the one `hf auth login` keeps) gives no access to it"
        else:
            access = "no token was sent: set HF_TOKEN or run `hf auth login` with an account that has access"
        if code == "GatedRepo" or (e.status == 403 and not code):
            message = f"the repository {self.repo_id} is gated, and {access}"
        elif code == "RepoNotFound" or (e.status == 401 and not code):
            message = f"the Hub ({self.endpoint}) has no repository {self.repo_id}, or it is private and {access}"
        elif code == "RevisionNotFound":
            message = f"the repository {self.repo_id} has no revision {self.revision!r}"
        elif code == "EntryNotFound":
            message = f"the repository {self.repo_id} has no file {name!r} at revision {self.revision!r}"
        else:
            return FlashRemoteError(f"{where}: {e}", e.status, e.url)
        return FlashRemoteError(f"{where}: {message} (HTTP {e.status})", e.status, e.url)


def is_lfs(info: ObjectInfo) -> bool:
    """Whether a listed file is kept in LFS (weights): its ETag is a sha256, and the Hub
    serves it through a redirect to its CDN."""
    return bool(info.etag) and len(info.etag) == 64


def _object_info(sibling: dict) -> ObjectInfo:
    """A listed file's size and ETag (the sha256 of an LFS file, else its git blob ID:
    what the Hub sends as ``X-Linked-Etag`` / ``ETag``, and its cache names blobs by)."""
    lfs = sibling.get("lfs") or {}
    return ObjectInfo(sibling.get("size"), lfs.get("sha256") or sibling.get("blobId"))


def authorize(endpoint: str, token: str) -> None:
    """Has ``token`` sent to ``endpoint``'s origin (scheme, host, port) and nowhere else, by
    the native reader and the Python client alike."""
    parts = urllib.parse.urlsplit(endpoint)
    register = getattr(_native.module(), "authorize_origin", None)
    if register is None:
        raise FlashError("this flashtensors build cannot send credentials (no native authorize_origin): rebuild it")
    register(f"{parts.scheme}://{parts.netloc}", f"Bearer {token}")
