"""Small file operations flashtensors shares: making a rename durable by fsyncing its
directory and removing a file that may already be gone (checkpoint saves, the local tier's
copies), and the stamp that tells one version of a file from the next (loads that retry
after a save, the daemon's copies).

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


def version_stamp(path) -> tuple:
    """What tells this version of file ``path`` from a later one: (device, inode, size,
    mtime_ns, ctime_ns). Saves replace an index by renaming a new file over it, and never
    rewrite a data file in place, so a save always changes the stamp. OSError if missing.

    Example:
        >>> version_stamp("/models/m/flash_index.json")                # doctest: +SKIP
        (2049, 1311, 4242, 1733570000000000000, 1733570000000000000)
    """
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
