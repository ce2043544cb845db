"""The wire protocol between the cache daemon and its clients.

One request per connection over a Unix stream socket. Every message is a frame: a
4-byte big-endian length, then that many bytes of UTF-8 JSON (an object). A reply to
``get`` is followed by a second frame holding the checkpoint's raw index, and carries
the shared-memory file descriptor with it (SCM_RIGHTS).

Requests are untrusted: :func:`parse_request` checks the frame size, the JSON, the
operation and the path before the daemon acts on them.

Example:
    >>> send_frame(sock, {"op": "get", "path": "/models/m"})
    >>> reply, fds = recv_frame(sock, MAX_REPLY_BYTES, max_fds=1)
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass

from ..errors import FlashError
from ..formats.flash import MAX_INDEX_BYTES

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 16 << 10
MAX_REPLY_BYTES = 4 << 20
MAX_PATH_BYTES = 4096
OPS = ("ping", "get", "load", "evict", "ls")
PATH_OPS = ("get", "load", "evict")
_HEADER = struct.Struct(">I")


class DaemonError(FlashError):
    """The cache daemon refused a request, or could not be reached or understood."""


class ProtocolError(DaemonError):
    """A malformed, oversized or truncated message."""


@dataclass(frozen=True)
class Request:
    op: str
    path: str | None = None


def send_frame(sock: socket.socket, obj, fds=()) -> None:
    """Sends one JSON frame; ``fds`` travel with its first bytes."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    send_bytes(sock, body, fds)


def send_bytes(sock: socket.socket, body: bytes, fds=()) -> None:
    """Sends one frame of raw bytes; ``fds`` travel with its first bytes."""
    data = _HEADER.pack(len(body)) + body
    # MSG_NOSIGNAL: a peer that went away is an EPIPE error here, never a SIGPIPE that
    # would kill a process keeping the default signal handling.
    if fds:
        sent = socket.send_fds(sock, [data], list(fds), socket.MSG_NOSIGNAL)
        data = data[sent:]
    while data:
        data = data[sock.send(data, socket.MSG_NOSIGNAL):]


def recv_frame(sock: socket.socket, max_bytes: int, max_fds: int = 0):
    """Receives one JSON frame: returns ``(object, [fds])``. The caller owns the fds.

    Raises ProtocolError for a frame over ``max_bytes``, invalid JSON, a non-object or
    a connection closed early; any fds received are closed first.
    """
    body, fds = recv_bytes(sock, max_bytes, max_fds)
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        close_fds(fds)
        raise ProtocolError(f"malformed message: {e}") from None
    if not isinstance(obj, dict):
        close_fds(fds)
        raise ProtocolError("malformed message: not a JSON object")
    return obj, fds


def recv_bytes(sock: socket.socket, max_bytes: int, max_fds: int = 0):
    """Receives one raw frame: returns ``(bytes, [fds])``."""
    fds = []
    try:
        if max_fds:
            head, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                raise ProtocolError("too many file descriptors in a message")
            head += _recv_exact(sock, _HEADER.size - len(head)) if head else b""
        else:
            head = _recv_exact(sock, _HEADER.size)
        if len(head) < _HEADER.size:
            raise ProtocolError("connection closed before a message arrived")
        (length,) = _HEADER.unpack(head)
        if length > max_bytes:
            raise ProtocolError(f"message of {length} bytes exceeds the limit of {max_bytes}")
        body = _recv_exact(sock, length)
        if len(body) < length:
            raise ProtocolError("connection closed in the middle of a message")
        return body, fds
    except BaseException:
        close_fds(fds)
        raise


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def parse_request(obj: dict) -> Request:
    """Validates a decoded request; raises ProtocolError saying what is wrong.

    Example:
        >>> parse_request({"v": 1, "op": "get", "path": "/models/m"})
        Request(op='get', path='/models/m')
    """
    unknown = set(obj) - {"v", "op", "path"}
    if unknown:
        raise ProtocolError(f"unknown request fields {sorted(unknown)[:4]}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r} is not {PROTOCOL_VERSION}")
    op = obj.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}")
    if op not in PATH_OPS:
        if "path" in obj:
            raise ProtocolError(f"{op!r} takes no path")
        return Request(op)
    path = obj.get("path")
    if not isinstance(path, str) or not path:
        raise ProtocolError("path must be a non-empty string")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("path is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES or "\0" in path:
        raise ProtocolError("path too long or holds a NUL byte")
    if not os.path.isabs(path):
        raise ProtocolError(f"path must be absolute, not {path!r}")
    return Request(op, path)


def request(op: str, path: str | None = None) -> dict:
    """A request object for :func:`send_frame`."""
    out = {"v": PROTOCOL_VERSION, "op": op}
    if path is not None:
        out["path"] = path
    return out


# The raw index follows a `get` reply in a frame of its own, up to the format's limit.
MAX_INDEX_FRAME_BYTES = MAX_INDEX_BYTES
