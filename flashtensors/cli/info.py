"""``flashtensors info DIR``: what a checkpoint holds (flash or safetensors), read from its
index or headers alone."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """\
examples:
  flashtensors info ./Qwen3-0.6B-flash
  flashtensors info s3://bucket/flash/Qwen3-0.6B
  flashtensors info ./Qwen3-0.6B-flash --json | jq '.tensors | length'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand to the ``flashtensors`` parser."""
    p = subparsers.add_parser(
        "info",
        help="list a checkpoint's tensors, size, data files, metadata and format (flash or safetensors)",
        description="List the tensors (name, dtype, shape), total size, data files, metadata and\n"
        "format version of the checkpoint in DIR: a flash checkpoint, a .safetensors file or a\n"
        "directory of safetensors weights, local or at an http(s):// or s3:// URL. Only the index (or\n"
        "the headers) is read.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="checkpoint directory, or a .safetensors file; or the URL of either "
                   "(http(s)://, s3://)")
    p.add_argument("--json", action="store_true", help="print the same as one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``flashtensors info`` with parsed ``args``; returns the exit code."""
    summary = describe(args.dir)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_text(summary))
    return 0


def describe(path) -> dict:
    """A JSON-ready summary of the checkpoint in ``path``.

    Keys: ``path``, ``format`` (``flash`` or ``safetensors``), ``format_version`` (None for
    safetensors), ``total_bytes`` (of the data files), ``files`` (``name``, ``size``),
    ``metadata``, ``tensors`` (``name``, ``dtype``, ``shape``, ``file``).

    Raises:
        FlashFormatError: ``path`` holds no valid checkpoint.

    Example:
        >>> describe("ckpt")["tensors"][0]                            # doctest: +SKIP
        {'name': 'weight', 'dtype': 'float32', 'shape': [3, 3], 'file': 'weights-1f0c9a2e-00000.flash'}
    """
    from flashtensors import flash

    index = flash.read_index(path)
    return {
        "path": str(path),
        "format": index.kind,
        "format_version": index.version if index.kind == "flash" else None,
        "total_bytes": index.total_bytes,
        "files": [{"name": f.name, "size": f.size} for f in index.files],
        "metadata": dict(index.metadata),
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "file": index.files[t.file].name}
            for t in index.tensors.values()
        ],
    }


def format_text(summary: dict) -> str:
    """The human-readable form of :func:`describe`'s summary."""
    from tqdm import tqdm

    def size(n: int) -> str:
        return tqdm.format_sizeof(n, "B")

    tensors, files = summary["tensors"], summary["files"]
    lines = [
        f"{summary['format']} checkpoint {summary['path']}"
        + (f" (format version {summary['format_version']})" if summary["format_version"] is not None else ""),
        f"{len(tensors)} tensor{'' if len(tensors) == 1 else 's'}, "
        f"{size(summary['total_bytes'])} ({summary['total_bytes']} bytes) "
        f"in {len(files)} data file{'' if len(files) == 1 else 's'}",
        "",
        "data files:",
        *(f"  {f['name']}  {size(f['size'])}" for f in files),
    ]
    if summary["metadata"]:
        lines += ["", "metadata:", *(f"  {k}: {v}" for k, v in summary["metadata"].items())]
    if tensors:
        name_width = max(len("name"), *(len(t["name"]) for t in tensors))
        dtype_width = max(len("dtype"), *(len(t["dtype"]) for t in tensors))
        lines += ["", f"  {'name':<{name_width}}  {'dtype':<{dtype_width}}  shape"]
        lines += [f"  {t['name']:<{name_width}}  {t['dtype']:<{dtype_width}}  {t['shape']}" for t in tensors]
    return "\n".join(lines)
