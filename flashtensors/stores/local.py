"""Checkpoint files on this machine's filesystem, as a store: the local counterpart of the
remote stores (flashtensors/stores/http.py, stores/s3.py). A store answers by file name,
relative to the checkpoint's directory: a file's size, a byte range of it, a listing, and
the path the native reader reads. Everything here is untrusted: only regular files are
read (O_NONBLOCK, so a FIFO under a checkpoint's name cannot hang a load), and a data file
that is a symlink must stay inside the directory.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import FlashFormatError
from .api import ObjectInfo

# A whole-file read (an index) returns at most this much plus one byte; callers check the size.
SMALL_FILE_CAP = 100_000_000
# Errors that mean "no such file" (a name too long, or through a non-directory, cannot name one).
_NO_SUCH_FILE = (errno.ENOENT, errno.ENAMETOOLONG, errno.ENOTDIR)


class LocalStore:
    """The files of directory ``directory``; ``single`` names the one file a location
    pointed at (a ``.safetensors`` file), else None.

    Example:
        >>> store = LocalStore("/models/m")                               # doctest: +SKIP
        >>> store.stat("flash_index.json").size
        4242
    """

    listable = True
    local = True

    def __init__(self, directory: str, single: str | None = None):
        self.dir = os.path.abspath(directory)
        self.single = single
        self._prefix = self.dir if self.dir.endswith("/") else self.dir + "/"

    def describe(self, name: str) -> str:
        return self._prefix + name  # os.path.join for a relative name, without its cost (every load)

    def identity(self) -> str:
        return self.dir

    def data_url(self, name: str) -> str:
        """The path the native reader reads for file ``name``."""
        return self.describe(name)

    def is_here(self, name: str) -> bool:
        return True

    def stat(self, name: str) -> ObjectInfo | None:
        """The size of regular file ``name`` (links followed; no ETag), None if there is
        none. FlashFormatError for something else under that name."""
        path = self.describe(name)
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno in _NO_SUCH_FILE:
                return None
            raise FlashFormatError(f"{path}: cannot stat: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FlashFormatError(f"{path}: not a regular file")
        return ObjectInfo(st.st_size, None)

    def check_inside(self, name: str) -> None:
        """FlashFormatError if file ``name`` is a link that leads out of the directory
        (a flash index names its data files, which must be the checkpoint's own)."""
        path = self.describe(name)
        if os.path.islink(path) and os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.dir):
            raise FlashFormatError(f"{path}: data file resolves outside the checkpoint directory")

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False,
             limit: int = SMALL_FILE_CAP):
        """``(bytes, ObjectInfo)`` of bytes ``start``..``end`` (inclusive; from the start
        or to the end when None; a whole file at most ``limit`` + 1 bytes, so that callers
        see it is too large), or None for a missing file when ``missing_ok``."""
        path = self.describe(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno not in _NO_SUCH_FILE:
                raise FlashFormatError(f"{path}: cannot open: {e.strerror}") from None
            if missing_ok:
                return None
            raise self.missing(name, "file missing") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FlashFormatError(f"{path}: not a regular file")
            first = start or 0
            last = min(st.st_size, first + limit + 1) - 1 if end is None else end
            return _pread_all(fd, first, max(0, last + 1 - first)), ObjectInfo(st.st_size, None)
        except OSError as e:
            raise FlashFormatError(f"{path}: cannot read: {e.strerror}") from None
        finally:
            os.close(fd)

    def list(self) -> list:
        """Names of the regular files (or links to them) in the directory."""
        try:
            return sorted(e.name for e in os.scandir(self.dir) if e.is_file())
        except OSError:
            return []

    def missing(self, name: str, message: str) -> FlashFormatError:
        """The error for a file a checkpoint needs and the directory lacks."""
        return FlashFormatError(f"{self.describe(name)}: {message}")


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts, got = [], 0
    while got < length:
        part = os.pread(fd, length - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def open_local(location) -> LocalStore:
    """The store of a local location: a directory, or one ``.safetensors`` file (then a
    store of its directory with ``single`` set). FlashFormatError when there is nothing
    at ``location``, or something that cannot be a checkpoint (another file)."""
    path = os.fspath(location)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in _NO_SUCH_FILE:
            raise no_such_location(path) from None
        raise FlashFormatError(f"{path}: cannot stat: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return LocalStore(path)
    if stat.S_ISREG(st.st_mode) and path.endswith(".safetensors"):
        return LocalStore(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    what = "a file" if stat.S_ISREG(st.st_mode) else "neither a file nor a directory"
    raise FlashFormatError(f"{path}: {what}, not a checkpoint; expected a flash checkpoint directory, "
                           "a .safetensors file or a directory of safetensors files")


def no_such_location(path) -> FlashFormatError:
    """The one error every command and function gives for a local path with nothing there."""
    return FlashFormatError(f"{os.fspath(path)}: no such file or directory")
