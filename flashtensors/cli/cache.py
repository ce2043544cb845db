"""``flashtensors cache ls|load DIR|evict DIR``: manage a running cache daemon."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  flashtensors cache ls                      # what the daemon holds, most recently used first
  flashtensors cache load ./Qwen3-8B-flash   # cache a checkpoint ahead of the first load
  flashtensors cache evict ./Qwen3-8B-flash  # free its memory (once no client is being served)
"""


def register(subparsers) -> None:
    """Add the ``cache`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "cache", help="list, load or evict checkpoints in the running cache daemon",
        description="Talk to the cache daemon started by `flashtensors serve`.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", metavar="PATH",
                   help="the daemon's socket (default: as `flashtensors serve`)")
    p.add_argument("action", choices=["ls", "load", "evict"], help="what to do")
    p.add_argument("dir", nargs="?", metavar="DIR", help="checkpoint directory (for load and evict)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``flashtensors cache`` with parsed ``args``; returns the exit code."""
    import os

    from ..daemon.client import DaemonClient
    from ..errors import FlashError

    client = DaemonClient(args.socket)
    if args.action != "ls" and not args.dir:
        raise FlashError(f"cache {args.action} needs a checkpoint directory")
    if args.action == "ls" and args.dir:
        raise FlashError("cache ls takes no directory")
    if not os.path.exists(client.socket_path):
        raise FlashError(f"no cache daemon at {client.socket_path} (start one with `flashtensors serve`)")
    if args.action == "ls":
        info = client.ls()
        print(f"{info['used'] / 1e9:.2f} of {info['budget'] / 1e9:.2f} GB used, {len(info['entries'])} checkpoints")
        for e in info["entries"]:
            print(f"{e['bytes'] / 1e9:9.2f} GB  {e['tensors']:7d} tensors  served {e['served']:6d}x  {e['path']}")
    elif args.action == "load":
        info = client.load(args.dir)
        print(f"cached {info['path']}: {info['tensors']} tensors, {info['nbytes'] / 1e9:.2f} GB")
    else:
        print(("evicted " if client.evict(args.dir) else "not cached: ") + os.path.abspath(args.dir))
    return 0
