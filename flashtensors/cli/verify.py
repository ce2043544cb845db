"""``flashtensors verify DIR``: recompute every tensor's checksum and compare with the index."""

from __future__ import annotations

import argparse

from .args import positive_int

EXAMPLES = """\
Exits 0 when every tensor matches, 1 on any problem: a checksum mismatch (the message
names the first mismatching tensors and their data files), a missing or truncated data
file, or an invalid index.

example:
  flashtensors verify ./Qwen3-0.6B-flash
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "verify",
        help="check every tensor of a flash checkpoint against its recorded checksum",
        description="Recompute the CRC-32C of every tensor in the flash checkpoint in DIR and\n"
        "compare it with the one recorded in the index.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="flash checkpoint directory (holds flash_index.json), or its URL "
                   "(http(s)://, s3://)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="I/O threads (default: by CPU count)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``flashtensors verify`` with parsed ``args``; returns the exit code.

    Problems raise FlashFormatError (FlashChecksumError for mismatches), which ``main``
    prints as one line and turns into exit code 1.
    """
    from flashtensors import flash

    n = flash.verify(args.dir, threads=args.threads)
    if not args.quiet:
        matches = "tensor matches its checksum" if n == 1 else "tensors match their checksums"
        print(f"ok: {n} {matches} in {args.dir}")
    return 0
