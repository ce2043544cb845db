"""``flashtensors fetch URL [DIR]``: a remote model's config and tokenizer, without its
weights, in a local directory (for an engine that streams the weights from the URL)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  flashtensors fetch s3://bucket/models/Qwen3-0.6B ./Qwen3-0.6B
  vllm serve "$(flashtensors fetch s3://bucket/models/Qwen3-0.6B)" --load-format flash \\
      --model-loader-extra-config '{"weights": "s3://bucket/models/Qwen3-0.6B"}'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fetch`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "fetch",
        help="fetch a remote model's config and tokenizer files (not its weights) into a directory",
        description="Fetch the config.json, tokenizer and other small files of the model directory at\n"
        "URL (s3://bucket/prefix, or http(s)://, where the usual Hugging Face names are asked for),\n"
        "never its weights, into DIR, and print DIR. vLLM reads its config and tokenizer there while\n"
        "--load-format flash streams the weights from URL (model_loader_extra_config 'weights').",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="the model directory's URL (s3://, http://, https://)")
    p.add_argument("dir", metavar="DIR", nargs="?",
                   help="where to put the files (default: ~/.cache/flashtensors/models/NAME-HASH)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``flashtensors fetch`` with parsed ``args``; returns the exit code."""
    from ..convert.model_files import fetch_model_files
    from ..errors import FlashError
    from ..stores import is_remote

    if not is_remote(args.url):
        raise FlashError(f"{args.url}: not a URL (s3://, http://, https://); a local directory needs no fetching")
    directory = fetch_model_files(args.url, args.dir)
    print(directory)  # alone on stdout, for $(flashtensors fetch URL)
    print(f"fetched the config and tokenizer of {args.url}; serve it with:\n"
          f"  vllm serve {directory} --load-format flash --model-loader-extra-config '{{\"weights\": \"{args.url}\"}}'",
          file=sys.stderr)
    return 0
