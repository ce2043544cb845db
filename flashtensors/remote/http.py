"""Small HTTP(S) requests made from Python: the index, a safetensors header, an object's
size and ETag. Never the tensor bytes (the native core reads those). Redirects are
followed; 5xx and dropped connections are retried within the timeout."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse

from ..errors import FlashRemoteError

MAX_REDIRECTS = 8
RETRIES = 4


def shown(url: str) -> str:
    """``url`` as messages show it: without the query string (presigned credentials)."""
    return url.split("?", 1)[0]


class Response:
    """What a small GET or HEAD came back with."""

    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    @property
    def total_size(self) -> int | None:
        """The object's size: from Content-Range of a range answer, else Content-Length."""
        content_range = self.headers.get("Content-Range")
        if content_range and "/" in content_range:
            total = content_range.rsplit("/", 1)[1].strip()
            return int(total) if total.isdigit() else None
        length = self.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None


def request(url: str, method: str = "GET", start: int | None = None, end: int | None = None,
            timeout: float = 30.0, missing_ok: bool = False) -> Response | None:
    """One GET (of bytes ``start``..``end`` inclusive, when given) or HEAD of ``url``.

    Returns None for a 404 when ``missing_ok``; raises FlashRemoteError naming the URL for
    any other failure.

    Example:
        >>> request("http://127.0.0.1:8080/m/flash_index.json").body[:1]   # doctest: +SKIP
        b'{'
    """
    headers = {"User-Agent": "flashtensors", "Accept-Encoding": "identity"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    deadline = time.monotonic() + timeout
    target, redirects, attempt = url, 0, 0
    while True:
        try:
            left = max(0.1, deadline - time.monotonic())
            status, reason, response_headers, body = _once(target, method, headers, left)
        except (OSError, http.client.HTTPException) as e:
            status, reason, response_headers, body = 0, f"{type(e).__name__}: {e}", {}, b""
            if isinstance(e, ssl.SSLCertVerificationError):
                raise FlashRemoteError(f"{shown(url)}: TLS certificate not trusted: {e}", url=shown(url)) from None
        if status in (301, 302, 303, 307, 308) and response_headers.get("Location"):
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise FlashRemoteError(f"{shown(url)}: more than {MAX_REDIRECTS} redirects", status, shown(url))
            target = urllib.parse.urljoin(target, response_headers["Location"])
            continue
        if status in (200, 206):
            return Response(status, response_headers, body)
        if status == 404 and missing_ok:
            return None
        retryable = status == 0 or status >= 500 or status in (408, 429)
        attempt += 1
        if not retryable or attempt >= RETRIES or time.monotonic() >= deadline:
            what = f"HTTP {status} {reason}" if status else reason
            raise FlashRemoteError(f"{shown(url)}: {what}", status, shown(url))
        time.sleep(min(0.1 * 2 ** attempt, max(0.0, deadline - time.monotonic())))


def _once(url: str, method: str, headers: dict, timeout: float):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read() if method == "GET" else b""
        return response.status, response.reason, response.headers, body
    finally:
        conn.close()
