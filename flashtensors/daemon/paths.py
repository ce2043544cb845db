"""Where the daemon's socket lives, and the ownership checks both ends make on it.

The socket sits in a directory of its own that only its owner may enter (mode 0700),
and is itself mode 0600. A client connects only to a socket whose directory and socket
file belong to its own user (or root) and that nobody else can write to, so another
user cannot slip in a fake daemon that hands out wrong weights.

Example:
    >>> default_socket_path()
    '/run/user/1000/flashtensors/cache.sock'
"""

from __future__ import annotations

import os
import stat

from ..errors import FlashError

ENV_VAR = "FLASHTENSORS_SERVER"
SOCKET_NAME = "cache.sock"
# FLASHTENSORS_SERVER set to one of these turns the daemon off for this process.
OFF_VALUES = ("", "0", "off", "none", "no", "false")


class UnsafeSocketError(FlashError):
    """The socket or its directory is owned by another user or open to others."""


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/flashtensors/cache.sock``, else ``/tmp/flashtensors-<uid>/cache.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "flashtensors", SOCKET_NAME)
    return os.path.join("/tmp", f"flashtensors-{os.getuid()}", SOCKET_NAME)


def resolve_server(server=None) -> str | None:
    """The socket path a client should try, or None when the daemon is off.

    ``server``: a socket path, ``False`` (never use a daemon), or ``None`` (then
    ``$FLASHTENSORS_SERVER`` if set, else :func:`default_socket_path`).
    """
    if server is False:
        return None
    if server is None or server is True:
        env = os.environ.get(ENV_VAR)
        if env is not None:
            return None if env.strip().lower() in OFF_VALUES else env
        return default_socket_path()
    return os.fspath(server)


def _trusted_owner(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def check_socket(path: str) -> None:
    """Raises UnsafeSocketError unless ``path`` is a socket owned by us (or root) in a
    directory owned by us (or root) that neither group nor others can write to or enter."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeSocketError(f"{path}: not a socket")
    directory = os.path.dirname(os.path.abspath(path))
    dst = os.stat(directory)
    if not _trusted_owner(st.st_uid) or not _trusted_owner(dst.st_uid):
        raise UnsafeSocketError(f"{path}: owned by another user (uid {st.st_uid}, directory uid {dst.st_uid})")
    if st.st_mode & 0o077 or dst.st_mode & 0o077:
        raise UnsafeSocketError(
            f"{path}: open to other users (socket mode {stat.S_IMODE(st.st_mode):04o}, directory mode "
            f"{stat.S_IMODE(dst.st_mode):04o}; both must be owner-only)")


def make_socket_dir(path: str) -> None:
    """Creates the socket's directory with mode 0700, or checks an existing one is ours
    and owner-only. Raises UnsafeSocketError otherwise."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketError(f"{directory}: not a directory (a symlink?)")
    if st.st_uid != os.getuid():
        raise UnsafeSocketError(f"{directory}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o077:
        raise UnsafeSocketError(
            f"{directory}: mode {stat.S_IMODE(st.st_mode):04o} lets other users in; "
            "the socket directory must be 0700 (chmod 700 it, or choose another --socket)")
