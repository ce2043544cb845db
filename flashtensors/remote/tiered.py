"""The local tier as a store: a remote store seen through ``cache_dir``. An object whose
local copy has the remote object's size and ETag is read from that copy (its header, and
by the native reader its bytes: ``data_url`` is then the copy's path); the others are read
from the remote store. Copies are written by the load itself (flashtensors/remote/cached.py)
and kept by flashtensors/remote/tier.py.
"""

from __future__ import annotations

from ..errors import FlashFormatError
from ..local_store import LocalStore
from ..store_api import ObjectInfo
from .tier import LocalTier


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
