"""``flashtensors convert SRC DST``: turn safetensors or PyTorch weights into a flash checkpoint."""

from __future__ import annotations

import argparse

from ..convert.to_flash import DTYPES, convert

EXAMPLES = """\
SRC may be:
  a .safetensors file, a .bin/.pt/.pth PyTorch state dict (loaded with weights_only=True),
  or a directory of them, such as a Hugging Face model directory (sharded or not);
  or an http(s):// or s3:// URL of a flash checkpoint, a .safetensors file or a Hugging
  Face directory (its tensors are streamed, 256 MB at a time).
The weights are streamed one file at a time into DST. For a directory, its other top-level
files (config.json, tokenizer files, ...) are copied too, so DST is a ready model directory.
DST may be s3://bucket/prefix: the flash checkpoint (SRC, or SRC converted in a temporary
directory) is uploaded there, data files first (multipart), the index last, so a
half-finished upload is never a checkpoint. Credentials and endpoint: the AWS environment.

examples:
  flashtensors convert ./Qwen3-0.6B ./Qwen3-0.6B-flash
  flashtensors convert model.safetensors ./ckpt --dtype bfloat16
  flashtensors convert pytorch_model.bin ./ckpt --overwrite --quiet
  flashtensors convert s3://bucket/hf/Qwen3-0.6B ./Qwen3-0.6B-flash
  flashtensors convert ./Qwen3-0.6B-flash s3://bucket/flash/Qwen3-0.6B
"""

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "convert",
        help="convert safetensors / PyTorch weights into a flash checkpoint",
        description="Convert safetensors or PyTorch weights into a flash checkpoint in DST.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="weights file or model directory, or its URL")
    p.add_argument("dst", metavar="DST", help="directory for the flash checkpoint (and the copied files), "
                   "or s3://bucket/prefix to upload it to")
    p.add_argument("--dtype", choices=DTYPES, help="cast floating-point tensors to this dtype")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint and files already in DST")
    p.add_argument("--no-copy", action="store_true", help="convert the weights only; copy no other files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``flashtensors convert`` with parsed ``args``; returns the exit code."""
    summary = convert(
        args.src,
        args.dst,
        dtype=args.dtype,
        overwrite=args.overwrite,
        copy_files=not args.no_copy,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(summary)
    return 0
