"""Talking to the cache daemon, and loading checkpoints through it.

``flash.load_dict`` calls :func:`try_load` first; it returns None (and the caller loads
directly) when no daemon is reachable, the target is a GPU, or the daemon fails in any
way, so a daemon can only make loads faster, never make them fail.

Example:
    >>> client = DaemonClient("/tmp/flashtensors-1000/cache.sock")
    >>> client.load("/models/m")                  # warm the cache ahead of time
    {'ok': True, 'path': '/models/m', 'nbytes': 1207959552, 'tensors': 311}
    >>> sd = client.load_tensors("/models/m")     # zero-copy CPU tensors
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import struct

from ..checkpoint import holds_flash
from ..errors import FlashError
from ..formats.flash import ALIGNMENT, INDEX_FILENAME, parse_index_bytes
from . import paths, protocol
from .protocol import DaemonError, ProtocolError

log = logging.getLogger("flashtensors")

# A `get` may have the daemon read the checkpoint from disk first.
TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0
# load_dict's automatic use of the daemon: a daemon that cannot answer within this time
# (stopped, stuck, still filling a large checkpoint) is passed over for a direct load.
AUTO_TIMEOUT_S = 5.0


class DaemonClient:
    """A connection factory for the daemon at ``socket_path`` (default: as :func:`paths.resolve_server`)."""

    def __init__(self, socket_path: str | None = None, timeout: float = TIMEOUT_S):
        self.socket_path = socket_path or paths.resolve_server(None) or paths.default_socket_path()
        self.timeout = timeout

    def ping(self) -> dict:
        """The daemon's pid and protocol version."""
        return self._call("ping")[0]

    def ls(self) -> dict:
        """``{"budget", "used", "entries": [{"path", "bytes", "tensors", "served", ...}]}``, most recent first."""
        return self._call("ls")[0]

    def load(self, path) -> dict:
        """Has the daemon cache the checkpoint in ``path`` (reloading it if it changed on disk)."""
        return self._call("load", path)[0]

    def evict(self, path) -> bool:
        """Drops the checkpoint in ``path`` from the daemon's memory; whether it was cached."""
        return self._call("evict", path)[0]["evicted"]

    def load_tensors(self, path, device_map=None) -> dict:
        """The checkpoint in ``path`` as ``{name: tensor}``, in saved order: zero-copy,
        copy-on-write views of the daemon's shared memory. Host devices only.

        Raises DaemonError when the daemon refuses or fails; FlashDeviceError for a device
        map naming anything but the CPU.
        """
        from ..device_map import normalize_device_map
        from ..errors import FlashDeviceError

        dmap = normalize_device_map(device_map)
        if any(d.type != "cpu" for d in dmap.values()):
            raise FlashDeviceError("the cache daemon serves CPU targets only")
        reply, fds, sock = self._call("get", path, keep_open=True)
        try:
            if len(fds) != 1:
                raise ProtocolError(f"expected one file descriptor, got {len(fds)}")
            index_bytes, _ = protocol.recv_bytes(sock, protocol.MAX_INDEX_FRAME_BYTES)
            if len(index_bytes) != reply.get("index_bytes"):
                raise ProtocolError("the index arrived truncated")
            whole = _map(fds[0], reply.get("nbytes"))
        finally:
            sock.close()
            protocol.close_fds(fds)
        _check_same_checkpoint(path, index_bytes)
        return _tensors(path, index_bytes, reply.get("offsets"), whole, dmap)

    def _connect(self) -> socket.socket:
        paths.check_socket(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(self.socket_path)
            sock.settimeout(self.timeout)
            _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
            if uid not in (os.getuid(), 0):
                raise paths.UnsafeSocketError(f"{self.socket_path}: served by uid {uid}, not by this user")
            return sock
        except BaseException:
            sock.close()
            raise

    def _call(self, op: str, path=None, keep_open: bool = False):
        if path is not None:
            path = os.path.abspath(os.fspath(path))
        sock = self._connect()
        fds = []
        try:
            try:
                protocol.send_frame(sock, protocol.request(op, path))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before reading the request: the reply, read next, says why
            reply, fds = protocol.recv_frame(sock, protocol.MAX_REPLY_BYTES, max_fds=1 if op == "get" else 0)
            if not reply.get("ok"):
                raise DaemonError(f"cache daemon: {reply.get('error', 'request refused')}")
        except BaseException:
            sock.close()
            protocol.close_fds(fds)
            raise
        if keep_open:
            return reply, fds, sock
        sock.close()
        return reply, fds


def _map(fd: int, nbytes):
    """A copy-on-write mapping of the daemon's sealed memfd, as a 1-D uint8 tensor."""
    import torch

    st = os.fstat(fd)
    if not isinstance(nbytes, int) or not stat.S_ISREG(st.st_mode) or st.st_size != nbytes:
        raise ProtocolError("the shared memory does not have the announced size")
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    if not seals & fcntl.F_SEAL_WRITE or not seals & fcntl.F_SEAL_SHRINK:
        raise ProtocolError("the shared memory is not sealed against writes")
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    # Through /proc/self/fd: torch maps it and keeps no descriptor open, however long the
    # tensors live (mmap.mmap would hold a duplicate fd per load).
    storage = torch.UntypedStorage.from_file(f"/proc/self/fd/{fd}", shared=False, nbytes=nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _tensors(path, index_bytes: bytes, offsets, whole, dmap) -> dict:
    """The index's tensors as views of ``whole``, the mapped shared memory, placed by the
    loader's own plan and view code."""
    from ..loader import assemble, new_plan

    where = f"{os.path.join(os.fspath(path), INDEX_FILENAME)} (as cached by the daemon)"
    index = parse_index_bytes(index_bytes, where)
    if not isinstance(offsets, list) or len(offsets) != len(index.files):
        raise ProtocolError("the file offsets do not match the index")
    mapped = {}
    for i, (f, off) in enumerate(zip(index.files, offsets)):
        if not isinstance(off, int) or off < 0 or off + f.size > whole.numel():
            raise ProtocolError(f"data file {f.name} lies outside the shared memory")
        mapped[i] = (whole.data_ptr() + off, whole)
    plan = new_plan(index, dmap)
    sizes = plan.layout(list(mapped), ALIGNMENT)
    return assemble(plan, [(0, whole) for _ in sizes], mapped)


def _check_same_checkpoint(path, index_bytes: bytes) -> None:
    """The daemon resolves ``path`` in its own view of the filesystem (another mount
    namespace, a chroot): the index it served must be the one this process sees there."""
    try:
        with open(os.path.join(os.fspath(path), INDEX_FILENAME), "rb") as f:
            own = f.read(len(index_bytes) + 1)
    except OSError as e:
        raise DaemonError(f"{path}: cannot read the index to compare with the daemon's: {e}") from None
    if own != index_bytes:
        raise DaemonError(f"{path}: the daemon's copy is not the checkpoint this process sees there")


def try_load(path, device_map=None, server=None):
    """Loads through the daemon when one is reachable; None when the caller should load
    directly (no daemon, a GPU target, or any failure, logged at debug level).

    Costs one stat when no daemon runs. ``server``: a socket path, False (never), or
    None (``$FLASHTENSORS_SERVER``, else the default socket path).
    """
    socket_path = paths.resolve_server(server)
    if socket_path is None:
        return None
    try:  # first, as the one cost of a load when no daemon runs
        if not stat.S_ISSOCK(os.stat(socket_path).st_mode):
            return None
    except OSError:
        return None
    if not holds_flash(path):  # the daemon serves flash checkpoints
        return None
    from ..device_map import normalize_device_map

    if any(d.type != "cpu" for d in normalize_device_map(device_map).values()):
        log.debug("%s: GPU targets are loaded directly, not through the cache daemon", path)
        return None
    try:
        return DaemonClient(socket_path, timeout=AUTO_TIMEOUT_S).load_tensors(path, device_map)
    except paths.UnsafeSocketError as e:
        log.warning("not using the cache daemon: %s", e)
    except (FlashError, OSError) as e:
        log.debug("%s: cache daemon at %s not used (%s); loading directly", path, socket_path, e)
    return None
