"""``flashtensors serve``: run the cache daemon (the DRAM tier) in the foreground."""

from __future__ import annotations

import argparse
import re

EXAMPLES = """\
Keeps whole checkpoints in shared memory under --memory, evicting the least recently
used. flash.load_dict() in processes of the same user finds the daemon by its socket
and maps CPU tensors from its memory; without a daemon it loads directly. Stops
cleanly on SIGTERM or Ctrl-C. See docs/daemon.md.

examples:
  flashtensors serve --memory 64GiB
  flashtensors serve --memory 8GB --socket /tmp/my-cache/cache.sock
  FLASHTENSORS_SERVER=/tmp/my-cache/cache.sock python train.py
"""

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``64GiB``, ``8GB``, ``512MiB``, ``1.5g``, ``1000000``.

    Example:
        >>> parse_size("2GiB")
        2147483648
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 64GiB, 8GB or 512MiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def register(subparsers) -> None:
    """Add the ``serve`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "serve", help="run the local cache daemon that keeps hot checkpoints in memory",
        description="Run the flashtensors cache daemon in the foreground.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", type=parse_size, required=True, metavar="SIZE",
                   help="memory budget for cached checkpoints, e.g. 64GiB")
    p.add_argument("--socket", metavar="PATH",
                   help="socket path (default: $FLASHTENSORS_SERVER, else $XDG_RUNTIME_DIR/flashtensors/"
                        "cache.sock, else /tmp/flashtensors-UID/cache.sock)")
    p.add_argument("--threads", type=int, metavar="N", help="I/O threads per load (default: by CPU count)")
    p.add_argument("-v", "--verbose", action="store_true", help="also log every request served")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``flashtensors serve`` with parsed ``args`` until SIGTERM; returns the exit code."""
    import logging

    from ..daemon import paths, server

    logging.basicConfig(format="%(asctime)s flashtensors serve: %(message)s",
                        level=logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("flashtensors.daemon").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    server.serve(args.socket or paths.resolve_server(None) or paths.default_socket_path(), args.memory,
                 threads=args.threads)
    return 0
