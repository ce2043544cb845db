"""A load's options, resolved from the arguments and the environment and checked once, up
front: a combination that cannot apply raises a FlashError naming the options, none is
silently ignored.

What combines (docs/loading.md has the table): every option with every layout and place,
alone or as a group, except
  - ``verify=True`` needs a flash checkpoint (safetensors files carry no checksums);
  - ``cache_dir`` is the local tier of a remote checkpoint (a local one is read in place);
  - ``server`` (the cache daemon) serves local flash checkpoints to one process, so it
    cannot be named together with ``group``, ``verify`` or a remote location.
Left at their defaults (``$FLASHTENSORS_CACHE_DIR``, ``$FLASHTENSORS_SERVER``), the tier and
the daemon are simply not used where they do not apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from .errors import FlashError
from .stores import is_remote, resolve_timeout, scheme_of

MAX_THREADS = 256
MAX_CONNECTIONS = 1024  # the native reader's bound, as for $FLASHTENSORS_CONNECTIONS
# How bytes reach host memory. "auto" maps cached files and reads the rest, choosing
# the page cache or O_DIRECT per piece; the others force one way (for benchmarks).
IO_MODES = ("auto", "mmap", "buffered", "direct")
CACHE_DIR_ENV = "FLASHTENSORS_CACHE_DIR"


@dataclass(frozen=True)
class LoadOptions:
    """The options of one load, resolved. ``server`` is the daemon's socket (a path,
    None for the default lookup, False for none); ``cache_dir`` the local tier or None;
    ``connections`` the remote requests in flight (0: ``$FLASHTENSORS_CONNECTIONS``,
    else 32, as the native reader decides)."""

    threads: int
    timeout: float
    cache_dir: str | None
    verify: bool
    server: object
    group: object
    io: str
    connections: int = 0

    @classmethod
    def resolve(cls, location, *, threads=None, timeout=None, cache_dir=None, verify=False, server=None,
                group=None, io="auto", connections=None) -> LoadOptions:
        """Checks the arguments of a load of ``location`` and fills in the defaults.

        Example:
            >>> LoadOptions.resolve("/models/m").threads >= 4
            True
            >>> LoadOptions.resolve("/models/m", cache_dir="/cache")
            Traceback (most recent call last):
            ...
            flashtensors.errors.FlashError: /models/m: cache_dir= is the local tier of remote checkpoints ...
        """
        if io not in IO_MODES:
            raise FlashError(f"io must be one of {IO_MODES}, not {io!r}")
        if not isinstance(verify, bool):
            raise FlashError(f"verify must be True or False, not {verify!r}")
        remote = is_remote(location)
        if connections is not None and not remote:
            raise FlashError(f"{location}: connections= sizes the requests in flight of a remote checkpoint "
                             "(http(s)://, s3://); a local one is read with threads=: drop connections")
        if cache_dir not in (None, False) and not remote:
            raise FlashError(f"{location}: cache_dir= is the local tier of remote checkpoints (http(s)://, s3://); "
                             "a local checkpoint is read where it lies: drop cache_dir")
        named_server = server not in (None, False)
        clashes = [what for what, on in (("group=", group is not None), ("verify=True", verify),
                                         ("a remote location", remote)) if on]
        if named_server and clashes:
            raise FlashError(f"{location}: server= (the cache daemon) serves local flash checkpoints to one "
                             f"process and cannot be combined with {' and '.join(clashes)}; drop server=")
        use_server = False if (clashes or server is False) else server
        tier = _cache_dir(cache_dir, location) if remote else None
        return cls(resolve_threads(threads), resolve_timeout(timeout), tier, verify, use_server, group, io,
                   _connections(connections))

    def check_kind(self, location, kind: str) -> None:
        """Refuses options the opened checkpoint's format cannot honour."""
        if self.verify and kind != "flash":
            raise FlashError(f"{location}: verify=True checks the CRC-32C checksums of a flash checkpoint, and "
                             f"{kind} files carry no checksums; drop verify, or make a flash checkpoint with "
                             "`flashtensors convert`")


@lru_cache(maxsize=None)
def default_threads() -> int:
    """I/O threads per load: enough to keep a disk queue and the copy engines busy."""
    return max(4, min(16, os.cpu_count() or 4))


def resolve_threads(threads) -> int:
    """The I/O thread count to use: ``threads`` checked, or the default for None."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise FlashError(f"threads must be an integer from 1 to {MAX_THREADS}, not {threads!r}")
    return threads


def _connections(connections) -> int:
    """``connections`` checked (0 for None: the environment or the default decides)."""
    if connections is None:
        return 0
    if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= MAX_CONNECTIONS:
        raise FlashError(f"connections must be an integer from 1 to {MAX_CONNECTIONS}, not {connections!r}")
    return connections


def _cache_dir(cache_dir, location) -> str | None:
    """The local tier's directory: ``cache_dir``, else ``$FLASHTENSORS_CACHE_DIR``, else
    None; ``False`` turns it off whatever the environment says. A Hub location's tier is
    the Hub's cache (flashtensors/stores/hub.py): only ``cache_dir`` moves it."""
    if cache_dir is False:
        return None
    if cache_dir is None and scheme_of(location) != "hf":
        cache_dir = os.environ.get(CACHE_DIR_ENV) or None
    return None if cache_dir is None else os.path.abspath(os.fspath(cache_dir))
