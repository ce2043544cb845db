"""The ``flashtensors`` command. Each subcommand lives in its own module here and
exposes ``register(subparsers)``; its parser's ``func`` returns the exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import FlashError

SUBCOMMANDS = ("convert", "fetch", "info", "verify", "bench", "serve", "cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashtensors",
        description="Convert weights to flash checkpoints; inspect, verify and benchmark checkpoints "
                    "(flash or safetensors); run the cache daemon.",
        epilog="Run `flashtensors COMMAND --help` for a command's options and an example.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"flashtensors {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage; the command's own says more (exits 2)
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`flashtensors info DIR | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FlashError, OSError) as e:
        print(f"flashtensors {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"flashtensors {args.command}: interrupted", file=sys.stderr)
        return 130


def _command_parser(parser: argparse.ArgumentParser, command) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (the top-level one when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command, parser)
    return parser


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())
