"""The cache daemon: accepts connections on a Unix socket and serves checkpoints from
its :class:`~flashtensors.daemon.holdings.Holdings`.

Security model (docs/daemon.md): the socket is 0600 in a 0700 directory owned by the
daemon's user; each connection's peer credentials (SO_PEERCRED) are checked and only
the daemon's own user, or root, is served, so a client only ever gets checkpoints it
could read itself. Every request is validated (size, JSON, operation, absolute path)
and served on a thread of its own with a timeout, so a slow or dead client holds no
other client up.

Example:
    >>> Daemon("/run/user/1000/flashtensors/cache.sock", memory=64 << 30).serve_forever()
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import stat
import struct
import threading
import time

from ..errors import FlashError
from . import paths, protocol
from .holdings import Holdings
from .protocol import DaemonError, ProtocolError

log = logging.getLogger("flashtensors.daemon")

REQUEST_TIMEOUT_S = 60.0  # per connection: reading the request, sending the reply
MAX_CONNECTIONS = 64
DRAIN_TIMEOUT_S = 2.0  # how long a refused client may take to finish sending


class Daemon:
    """Serves checkpoints from memory on ``socket_path`` under a ``memory`` byte budget."""

    def __init__(self, socket_path: str, memory: int, threads: int | None = None):
        self.socket_path = os.path.abspath(socket_path)
        self.holdings = Holdings(memory, threads=threads)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listener = None
        self._socket_ino = None
        self._handlers: set = set()
        self._handlers_lock = threading.Lock()

    def bind(self) -> None:
        """Creates the socket (0600, in a 0700 directory). Refuses if another daemon answers there."""
        paths.make_socket_dir(self.socket_path)
        if os.path.lexists(self.socket_path):
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise DaemonError(f"{self.socket_path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(5)
            try:
                probe.connect(self.socket_path)
                raise DaemonError(f"{self.socket_path}: a cache daemon is already serving here")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.socket_path)  # left by a daemon that died
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        listener.listen(128)
        self._socket_ino = os.stat(self.socket_path).st_ino
        self._listener = listener

    def serve_forever(self) -> None:
        """Binds (if not yet bound) and serves until :meth:`stop` (or SIGTERM via :func:`serve`)."""
        if self._listener is None:
            self.bind()
        log.info("serving on %s with a budget of %.2f GB (pid %d)", self.socket_path,
                 self.holdings.budget / 1e9, os.getpid())
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stop.is_set():
                        self._accept()
        finally:
            sel.close()
            self._shutdown()

    def stop(self) -> None:
        """Asks :meth:`serve_forever` to return; safe from signal handlers and other threads."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with self._handlers_lock:
            busy = len(self._handlers) >= MAX_CONNECTIONS
        if busy:
            log.warning("refused a connection: %d requests are already being served", MAX_CONNECTIONS)
            conn.close()
            return
        thread = threading.Thread(target=self._handle, args=(conn,), daemon=True, name="flashtensors-serve")
        with self._handlers_lock:
            self._handlers.add(thread)
        thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
            if uid not in (os.getuid(), 0):
                log.warning("refused pid %d: uid %d is not this daemon's user", pid, uid)
                _refuse(conn, f"refused: this daemon serves uid {os.getuid()} only")
                return
            try:
                obj, _ = protocol.recv_frame(conn, protocol.MAX_REQUEST_BYTES)
                req = protocol.parse_request(obj)
            except ProtocolError as e:
                log.warning("refused a malformed request from pid %d: %s", pid, e)
                _refuse(conn, f"malformed request: {e}")
                return
            try:
                self._dispatch(conn, req, pid)
            except FlashError as e:
                log.info("pid %d: %s %s failed: %s", pid, req.op, req.path or "", e)
                _reply_error(conn, str(e))
        except OSError as e:  # the client went away or timed out; nothing of ours is held
            log.debug("a connection ended early: %s", e)
        except Exception as e:  # a bug of ours: say so, keep serving the others
            log.exception("internal error while serving a request")
            _reply_error(conn, f"internal error in the cache daemon: {type(e).__name__}: {e}")
        finally:
            conn.close()
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())

    def _dispatch(self, conn: socket.socket, req: protocol.Request, pid: int) -> None:
        if req.op == "ping":
            protocol.send_frame(conn, {"ok": True, "pid": os.getpid(), "version": protocol.PROTOCOL_VERSION})
        elif req.op == "ls":
            protocol.send_frame(conn, {"ok": True, **self.holdings.describe()})
        elif req.op == "evict":
            protocol.send_frame(conn, {"ok": True, "evicted": self.holdings.evict(_real_dir(req.path))})
        else:  # get, load
            entry = self.holdings.acquire(_real_dir(req.path))
            try:
                info = {"ok": True, "path": entry.path, "nbytes": entry.nbytes, "tensors": entry.tensors}
                if req.op == "load":
                    protocol.send_frame(conn, info)
                    return
                info.update(offsets=entry.offsets, index_bytes=len(entry.index_bytes))
                protocol.send_frame(conn, info, fds=[entry.fd])
                protocol.send_bytes(conn, entry.index_bytes)
                log.debug("served %s to pid %d", entry.path, pid)
            finally:
                self.holdings.release(entry)

    def _shutdown(self) -> None:
        try:
            if self._listener is not None:
                self._listener.close()
            # Remove the socket only if it is still ours (not a successor's).
            if self._socket_ino is not None and os.stat(self.socket_path).st_ino == self._socket_ino:
                os.unlink(self.socket_path)
        except OSError:
            pass
        with self._handlers_lock:
            handlers = list(self._handlers)
        deadline = time.monotonic() + 5  # one deadline for all: a stop must stay quick
        for thread in handlers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.holdings.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped")


def _real_dir(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise DaemonError(f"{path}: not a directory")
    return real


def _reply_error(conn: socket.socket, message: str) -> None:
    try:
        protocol.send_frame(conn, {"ok": False, "error": message[:4096]})
    except OSError:
        pass


def _refuse(conn: socket.socket, message: str) -> None:
    """Replies with an error, then reads (and drops) what the client still sends, a
    bounded amount for a bounded time: closing with unread bytes would reset the
    connection and the client might lose the reply saying why it was refused."""
    _reply_error(conn, message)
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(DRAIN_TIMEOUT_S)
        left = protocol.MAX_REQUEST_BYTES + 4
        while left > 0 and (chunk := conn.recv(min(left, 65536))):
            left -= len(chunk)
    except OSError:
        pass


def serve(socket_path: str | None, memory: int, threads: int | None = None) -> None:
    """Runs a daemon in this process until SIGTERM or SIGINT; the body of ``flashtensors serve``."""
    import torch  # noqa: F401  (imported now, not inside the first load's timing)

    from .. import _native

    _native.module()
    daemon = Daemon(socket_path or paths.default_socket_path(), memory, threads=threads)
    daemon.bind()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: daemon.stop())
    daemon.serve_forever()
