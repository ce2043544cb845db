"""Small HTTP(S) requests made from Python: the index, a safetensors header, an object's
size and ETag. Never the tensor bytes (the native core reads those).

Every request stays inside the load's :class:`~.deadline.Deadline`; redirects are
followed; 5xx, 408, 429, dropped connections and short or empty bodies are retried with
jittered backoff within it (at least the server's Retry-After). A body trickling in
slower than 64 KiB per timeout is no progress (as for the native reader). A request to an
origin given a credential (``_native.authorize_origin``, the registry the native reader
uses) carries it as its Authorization header; a request to any other host a redirect
leads to does not. A body is never buffered past what was asked for: a range
read keeps at most the range (from a server that ignores ``Range``, the start of the
object, the rest left unread), a whole read at most ``limit`` bytes. Proxies are those
the native reader uses (``http_proxy``, ``https_proxy`` through CONNECT, ``no_proxy``,
upper or lower case, as curl reads them).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse

from ..errors import FlashRemoteError
from .deadline import Deadline, as_deadline, retry_after, retryable_status

# As the native reader's kMaxRedirects (csrc/http_protocol.h), held equal by the tests.
MAX_REDIRECTS = 8
# Useful progress: bytes of a body per step of the deadline (the native kUsefulBytes).
USEFUL_BYTES = 64 << 10
# The most a whole-object read keeps (an index, a config or tokenizer file).
MAX_OBJECT_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20


def shown(url: str) -> str:
    """``url`` as messages show it: without the query string (presigned credentials) or
    fragment."""
    return url.split("?", 1)[0].split("#", 1)[0]


class Response:
    """What a small GET came back with."""

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


class _Retry(Exception):
    """An answer worth asking again for (a short body)."""


def request(url: str, start: int | None = None, end: int | None = None, timeout: float | Deadline = 30.0,
            missing_ok: bool = False, limit: int = MAX_OBJECT_BYTES, etag: str | None = None) -> Response | None:
    """One GET of ``url``: bytes ``start``..``end`` (inclusive) when given, else the whole
    object (at most ``limit`` bytes). ``timeout``: seconds, or the load's Deadline.
    ``etag``: the version to read (If-Match, and the answer's ETag checked).

    Returns None for a 404 when ``missing_ok``; raises FlashRemoteError naming the URL for
    any other failure: a 412 or another ETag (the object changed), an object larger than
    ``limit``, a server that ignores ``Range`` for a read not at the start.

    Example:
        >>> request("http://127.0.0.1:8080/m/flash_index.json").body[:1]   # doctest: +SKIP
        b'{'
    """
    deadline = as_deadline(timeout)
    headers = {"User-Agent": "flashtensors", "Accept-Encoding": "identity"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    if etag and etag.startswith('"'):
        headers["If-Match"] = etag  # a weak ETag never matches If-Match: checked on the answer instead
    target, redirects, failures = url, 0, 0
    while True:
        try:
            status, reason, response_headers, body = _once(target, headers, deadline, start, end, limit)
        except _Retry as e:
            status, reason, response_headers, body = 0, str(e), {}, b""
        except ssl.SSLCertVerificationError as e:
            host = urllib.parse.urlsplit(target).hostname
            raise FlashRemoteError(f"{shown(url)}: TLS certificate not trusted for {host}: {e.verify_message}",
                                   url=shown(url)) from None
        except (OSError, http.client.HTTPException) as e:
            status, reason, response_headers, body = 0, f"{type(e).__name__}: {e}", {}, b""
        if status in (301, 302, 303, 307, 308) and response_headers.get("Location"):
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise FlashRemoteError(f"{shown(url)}: more than {MAX_REDIRECTS} redirects", status, shown(url))
            target = urllib.parse.urljoin(target, response_headers["Location"])
            continue
        if status in (200, 206):
            deadline.progress()
            answer = Response(status, response_headers, body)
            if etag and answer.etag and answer.etag != etag:
                raise FlashRemoteError(f"{shown(url)}: the object changed during the load (ETag {answer.etag}, "
                                       f"was {etag})", 412, shown(url))
            return answer
        if status == 404 and missing_ok:
            return None
        if status == 412:
            raise FlashRemoteError(f"{shown(url)}: the object changed during the load (HTTP 412 {reason} to "
                                   f"If-Match {etag})", status, shown(url))
        failures += 1
        retryable = status == 0 or retryable_status(status)
        wait = retry_after(response_headers.get("Retry-After")) if retryable else 0.0
        if not retryable or not deadline.pause(failures, wait):
            what = f"HTTP {status} {reason}" if status else reason
            if retryable and wait > deadline.left():
                what += f", and its Retry-After of {wait:g} s is past the {deadline.timeout:g} s timeout"
            elif retryable and deadline.expired():
                what = f"no answer within {deadline.timeout:g} s, retries included; last: {what}"
            error = FlashRemoteError(f"{shown(url)}: {what}", status, shown(url))
            error.headers = response_headers  # what the server said, for stores that read its error codes
            raise error



def _connection(url: str, deadline: Deadline):
    """``(connection, request target)`` for ``url``, through the proxy the native reader
    would use."""
    from .. import _native

    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        proxy_host, proxy_port, authorization = _native.module().proxy_for(url)
    except OSError as e:  # a proxy setting that cannot be used: asking again will not help
        raise FlashRemoteError(f"{shown(url)}: {e}", 0, shown(url)) from None
    proxy_headers = {"Proxy-Authorization": authorization} if authorization else None
    left = max(0.01, deadline.left())
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if not proxy_host:
            return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=left, context=context), path, {}
        conn = http.client.HTTPSConnection(proxy_host, int(proxy_port), timeout=left, context=context)
        conn.set_tunnel(parts.hostname, parts.port or 443, headers=proxy_headers)
        return conn, path, {}
    if not proxy_host:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=left), path, {}
    absolute = urllib.parse.urlunsplit(("http", parts.netloc, parts.path or "/", parts.query, ""))
    return http.client.HTTPConnection(proxy_host, int(proxy_port), timeout=left), absolute, proxy_headers or {}


def _once(url: str, headers: dict, deadline: Deadline, start, end, limit: int):
    from .. import _native

    conn, path, extra = _connection(url, deadline)
    authorization = _native.module().origin_authorization(url)  # this origin's only: never across hosts
    if authorization:
        extra = {**extra, "Authorization": authorization}
    try:
        conn.request("GET", path, headers={**headers, **extra})
        response = conn.getresponse()
        if response.status not in (200, 206):
            return response.status, response.reason, response.headers, b""
        if start is None:
            keep = limit
        elif response.status == 200 and start > 0:
            raise FlashRemoteError(f"{shown(url)}: the server ignores Range requests (answered 200 with the whole "
                                   "object)", 200, shown(url))
        else:  # the range; from a server that ignores Range, the same bytes at the object's start
            keep = (limit if end is None else min(limit, end - start + 1))
        declared = response.headers.get("Content-Length")
        if start is None and declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit)
        body = _read_at_most(conn, response, keep + (1 if start is None else 0), deadline)
        if start is None and len(body) > limit:
            raise _too_large(url, limit)
        expected = _expected_length(response, start, end, keep)
        if len(body) < expected:
            raise _Retry(f"a short body ({len(body)} of {expected} bytes, HTTP {response.status} {response.reason})")
        return response.status, response.reason, response.headers, body
    finally:
        conn.close()  # also drops whatever of the body was not read


def _read_at_most(conn, response, n: int, deadline: Deadline) -> bytes:
    """Up to ``n`` bytes of the body; each USEFUL_BYTES received moves the deadline on, and
    a body trickling slower than that is cut at the deadline (a retry)."""
    chunks, got, pending = [], 0, 0
    while got < n:
        if deadline.expired():
            raise _Retry(f"the body trickled ({pending} bytes in {deadline.timeout:g} s)")
        if conn.sock is not None:
            conn.sock.settimeout(max(0.01, deadline.left()))
        chunk = response.read1(min(CHUNK_BYTES, n - got))
        if not chunk:
            break
        pending += len(chunk)
        if pending >= USEFUL_BYTES:
            deadline.progress()
            pending = 0
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _expected_length(response, start, end, keep: int) -> int:
    """The bytes a complete answer holds (of the ``keep`` asked for at most)."""
    total = Response(response.status, response.headers, b"").total_size
    if total is None:
        return 0 if start is None else 1
    first = 0 if start is None or response.status == 200 else start
    return max(0, min(keep, total - first))


def _too_large(url: str, limit: int) -> FlashRemoteError:
    return FlashRemoteError(f"{shown(url)}: larger than {limit} bytes, too large to be read whole", 0, shown(url))
