"""Small file operations every writer of flashtensors shares (checkpoint saves, the local
tier's copies): making a rename durable by fsyncing its directory, and removing a file that
may already be gone.

Example:
    >>> os.replace("model.part", "model.flash"); fsync_dir(".")        # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os


def fsync_dir(path) -> None:
    """fsyncs directory ``path`` so that renames and unlinks in it survive a crash. Some
    filesystems (FUSE, network ones) cannot fsync a directory (EINVAL, ENOTSUP, EBADF):
    there is nothing more to do on those, so that is not an error."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def unlink_quietly(path) -> None:
    """Removes file ``path``; one already gone is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
