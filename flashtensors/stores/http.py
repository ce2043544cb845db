"""Web servers as stores: a checkpoint directory (or one ``.safetensors`` file) under an
``http(s)://`` URL, read with small range GETs; the native reader fetches the tensor
bytes from ``data_url(name)``. See flashtensors/stores/api.py for what a store answers."""

from __future__ import annotations

import urllib.parse

from ..errors import FlashRemoteError
from . import http_client as http
from .api import ObjectInfo
from .deadline import Deadline
from .versions import Versions


class HttpStore:
    """Objects below ``base``, an http(s):// URL of a directory (no listing: names must be
    known: the flash index, the HF weight index, ``model.safetensors``). ``urls`` pins
    names to full URLs (a presigned URL of one file)."""

    listable = False
    local = False

    def __init__(self, base: str, timeout: float, urls: dict | None = None, single: str | None = None):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.urls = urls or {}
        self.single = single
        self.deadline = Deadline(timeout)  # one per opened checkpoint: every request of it
        self.versions = Versions()  # reads pinned to the ETags first seen

    def describe(self, name: str) -> str:
        return http.shown(self.data_url(name))

    def identity(self) -> str:
        """Where the objects live, as the local tier names its copy of them."""
        return self.base

    def data_url(self, name: str) -> str:
        return self.versions.pinned_url(name, self._url(name))

    def _url(self, name: str) -> str:
        return self.urls.get(name) or f"{self.base}/{urllib.parse.quote(name)}"

    def is_here(self, name: str) -> bool:
        return False

    def stat(self, name: str) -> ObjectInfo | None:
        # A one-byte GET, not HEAD: presigned URLs are signed for GET only.
        return self._get(name, 0, 0, True, http.MAX_OBJECT_BYTES, stat=True)

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False,
             limit: int = http.MAX_OBJECT_BYTES):
        """``(bytes, ObjectInfo)`` of bytes ``start``..``end`` (inclusive; all when None, at
        most ``limit``), or None for a missing object when ``missing_ok``."""
        return self._get(name, start, end, missing_ok, limit)

    def _get(self, name, start, end, missing_ok, limit, stat=False):
        url = self._url(name)
        r = http.request(url, start=start, end=end, timeout=self.deadline, missing_ok=missing_ok, limit=limit,
                         etag=self.versions.etag(name))
        if r is None:
            return None
        self.versions.seen(name, r.etag, http.shown(url))
        info = ObjectInfo(r.total_size, r.etag)
        return info if stat else (r.body, info)

    def list(self) -> list:
        raise FlashRemoteError(f"{self.base}: a web server cannot be listed", url=self.base)

    def missing(self, name: str, message: str) -> FlashRemoteError:
        """The error for an object a checkpoint needs and the server lacks."""
        where = self.describe(name).rstrip("/")
        return FlashRemoteError(f"{where}: {message} (HTTP 404)", 404, where)


def open_http(url: str, timeout: float) -> HttpStore:
    """The store of an ``http(s)://`` location: a directory, or one ``.safetensors`` file
    (a presigned URL of one file included; then ``single`` names it).

    Example:
        >>> open_http("http://h:8080/m/model.safetensors", 30).single   # doctest: +SKIP
        'model.safetensors'
    """
    path = http.shown(url)
    if path.endswith(".safetensors"):
        parent, _, name = path.rpartition("/")
        name = urllib.parse.unquote(name)
        return HttpStore(parent, timeout, {name: url}, single=name)
    if "?" in url:
        raise FlashRemoteError(f"{path}: a URL with a query string must name one .safetensors file", url=path)
    return HttpStore(url, timeout)
