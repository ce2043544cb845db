"""``flashtensors convert SRC DST``: turn safetensors or PyTorch weights into a flash checkpoint."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from flashtensors import FlashError

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

# Floating dtypes ``--dtype`` accepts; integer and bool tensors are never cast.
DTYPES = ("float16", "bfloat16", "float32", "float64")
# Safetensors files are written in batches of about this many bytes, so the progress bar moves.
BATCH_BYTES = 256 << 20


class DestinationError(FlashError):
    """DST cannot take the checkpoint: it is a file, or holds files that would be replaced."""


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


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    copy_files: bool = True,
    progress: bool = True,
) -> str:
    """Convert the weights at ``src`` into a flash checkpoint at ``dst``; returns a one-line summary.

    Weights are read and written one file at a time (safetensors files in batches of about
    ``BATCH_BYTES``), so peak memory is about one weight file, not the whole model. The checkpoint
    is committed only when every file converted; on an error nothing is left in ``dst``.

    Args:
        src: a ``.safetensors`` file, a ``.bin``/``.pt``/``.pth`` state dict, or a directory of them;
            or an ``http(s)://`` / ``s3://`` URL of a flash checkpoint, a safetensors file or a
            Hugging Face directory (its other files are listed on S3; on a web server the usual
            config and tokenizer names are fetched).
        dst: directory for the checkpoint; a directory source's other top-level files are copied there.
            Or ``s3://bucket/prefix``: see :func:`flashtensors.cli.upload.upload`.
        dtype: name of a floating dtype (``"bfloat16"``, ...) to cast floating tensors to.
        overwrite: replace an existing checkpoint and existing copies in ``dst``.
        copy_files: copy a directory source's non-weight files (config, tokenizer, ...).
        progress: show a progress bar in bytes on stderr (only when it is a terminal).

    Raises:
        flashtensors.sources.SourceError: ``src`` is missing, unreadable or unsupported.
        FlashError: ``dst`` holds a checkpoint or files that would be replaced, without ``overwrite``.

    Example:
        >>> convert("Qwen3-0.6B/", "Qwen3-0.6B-flash/", dtype="bfloat16")  # doctest: +SKIP
        'converted 311 tensors from Qwen3-0.6B into Qwen3-0.6B-flash (1.50GB, cast to bfloat16 from 3.01GB);
        copied 7 files'
        >>> convert("s3://bucket/hf/Qwen3-0.6B", "Qwen3-0.6B-flash/")      # doctest: +SKIP
        >>> convert("Qwen3-0.6B-flash/", "s3://bucket/flash/Qwen3-0.6B")   # doctest: +SKIP
    """
    import torch
    from tqdm import tqdm

    from flashtensors.checkpoint import holds_flash
    from flashtensors.flash import read_index
    from flashtensors.locations import is_remote
    from flashtensors.sources import open_source
    from flashtensors.writer import CheckpointWriter

    if is_remote(dst):
        from .upload import upload

        return upload(src, dst, dtype=dtype, overwrite=overwrite, copy_files=copy_files, progress=progress,
                      convert=convert)
    source = open_source(src)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst}: exists and is not a directory")
    if holds_flash(dst) and not overwrite:
        raise DestinationError(f"{dst}: already holds a flash checkpoint; pass --overwrite to replace it")
    extras = _extras_to_copy(source, dst, overwrite) if copy_files else []
    cast_to = getattr(torch, dtype) if dtype else None
    metadata = source.metadata  # safetensors' __metadata__ stays with the weights

    bar = tqdm(
        total=source.nbytes,
        unit="B",
        unit_scale=True,
        desc="convert",
        file=sys.stderr,
        disable=None if progress else True,  # None: only when stderr is a terminal
    )
    created = not dst.exists()
    try:
        with bar, CheckpointWriter(dst, overwrite=overwrite, metadata=metadata) as writer:
            n_tensors, n_read = _write_weights(source, writer, cast_to, bar)
            for path in extras:  # before the commit: a failed copy leaves no checkpoint behind
                source.copy_extra(path, dst)
    except BaseException:
        if created:  # the writer discarded its files; do not leave the directory it made behind
            shutil.rmtree(dst, ignore_errors=True)
        raise

    written = {(t.file, t.offset, t.length) for t in read_index(dst).tensors.values()}  # tied tensors once
    size = tqdm.format_sizeof(sum(length for _, _, length in written), "B")  # what was written, after any cast
    read = f", cast to {dtype} from {tqdm.format_sizeof(n_read, 'B')}" if dtype else ""
    summary = f"converted {_plural(n_tensors, 'tensor')} from {source.path} into {dst} ({size}{read})"
    if metadata:
        summary += f"; kept metadata {', '.join(sorted(metadata))}"
    if extras:
        summary += f"; copied {_plural(len(extras), 'file')}"
    if copy_files and source.skipped_dirs:
        summary += f"; did not copy subdirectories: {', '.join(p.name for p in source.skipped_dirs)}"
    return summary


def _write_weights(source, writer, cast_to, bar) -> tuple:
    """Stream every weight file of ``source`` into ``writer``; returns the number of tensors
    and of their bytes as read (tied tensors once)."""
    n_tensors, n_bytes = 0, 0
    for shard in source.shards:
        end = bar.n + source.shard_bytes(shard)
        for batch in source.batches(shard, BATCH_BYTES):
            read = sum(t.nbytes for t in batch.values())
            n_bytes += sum(n for _, _, n in {_region(t) for t in batch.values()})
            writer.write(_cast(batch, cast_to) if cast_to is not None else batch)
            n_tensors += len(batch)
            bar.update(min(read, end - bar.n))
        bar.update(end - bar.n)  # the file's header and padding
    return n_tensors, n_bytes


def _region(t) -> tuple:
    """The bytes a tensor occupies, to count tied tensors once."""
    return t.untyped_storage().data_ptr(), t.storage_offset() * t.element_size(), t.nbytes


def _extras_to_copy(source, dst: Path, overwrite: bool) -> list[Path]:
    """The extras to copy into ``dst``; refuses, before anything is written, to replace files."""
    extras = [p for p in source.extras if not _same_file(p, dst / p.name)]
    if not overwrite:
        clashes = [p.name for p in extras if (dst / p.name).exists()]
        if clashes:
            raise DestinationError(
                f"{dst}: already has {', '.join(clashes)}; pass --overwrite to replace"
            )
    return extras


def _same_file(a: Path, b: Path) -> bool:
    if not isinstance(a, Path):  # a remote file
        return False
    try:
        return a.samefile(b)
    except OSError:
        return False


def _cast(batch: dict, dtype) -> dict:
    """Cast floating tensors to ``dtype``; views of the same data stay shared."""
    cast, out = {}, {}
    for name, t in batch.items():
        if not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key not in cast:
            cast[key] = t.to(dtype)
        out[name] = cast[key]
    return out


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
