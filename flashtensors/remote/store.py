"""Where a remote checkpoint's objects live: a web server directory (HTTP range GETs) or
an S3 prefix (botocore). A store answers by object name, relative to the checkpoint:
its size and ETag, a byte range of it, and the URL the native reader gets for it."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ..errors import FlashRemoteError
from . import http
from .deadline import Deadline
from .versions import Versions


@dataclass(frozen=True)
class ObjectInfo:
    """An object's identity as the local cache tier compares it."""

    size: int
    etag: str | None


class HttpStore:
    """Objects below ``base``, an http(s):// URL of a directory (no listing: names must be
    known: the flash index, the HF weight index, ``model.safetensors``). ``urls`` pins
    names to full URLs (a presigned URL of one file)."""

    listable = False

    def __init__(self, base: str, timeout: float, urls: dict | None = None):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.urls = urls or {}
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


def open_store(url: str, timeout: float):
    """``(store, file name or None)`` for a checkpoint URL: a directory, or one
    ``.safetensors`` file (then the name of that file in the store).

    Example:
        >>> store, single = open_store("http://h:8080/m/model.safetensors", 30)  # doctest: +SKIP
        >>> single
        'model.safetensors'
    """
    if url.startswith("s3://"):
        from .s3 import S3Store

        bucket, _, key = url[5:].partition("/")
        if key.endswith(".safetensors"):
            prefix, _, name = key.rpartition("/")
            return S3Store(bucket, prefix, timeout), name
        return S3Store(bucket, key.rstrip("/"), timeout), None
    path = http.shown(url)
    if path.endswith(".safetensors"):
        parent, _, name = path.rpartition("/")
        name = urllib.parse.unquote(name)
        return HttpStore(parent, timeout, {name: url}), name
    if "?" in url:
        raise FlashRemoteError(f"{path}: a URL with a query string must name one .safetensors file", url=path)
    return HttpStore(url, timeout), None
