"""Converting weights into a flash checkpoint, as a library (``flashtensors convert``):
:func:`convert` streams safetensors or PyTorch weights, local or remote, one file at a
time into a checkpoint directory, copying the model's other files; :func:`upload` puts a
checkpoint (converted first when it is not one) on S3.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import FlashError

# Floating dtypes ``--dtype`` accepts; integer and bool tensors are never cast.
DTYPES = ("float16", "bfloat16", "float32", "float64")
# Safetensors files are written in batches of about this many bytes, so the progress bar moves.
BATCH_BYTES = 256 << 20


class DestinationError(FlashError):
    """DST cannot take the checkpoint: it is a file, or holds files that would be replaced."""


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
            Or ``s3://bucket/prefix``: see :func:`upload`.
        dtype: name of a floating dtype (``"bfloat16"``, ...) to cast floating tensors to.
        overwrite: replace an existing checkpoint and existing copies in ``dst``.
        copy_files: copy a directory source's non-weight files (config, tokenizer, ...).
        progress: show a progress bar in bytes on stderr (only when it is a terminal).

    Raises:
        flashtensors.convert.sources.SourceError: ``src`` is missing, unreadable or unsupported.
        FlashError: ``dst`` holds a checkpoint or files that would be replaced, without ``overwrite``.

    Example:
        >>> convert("Qwen3-0.6B/", "Qwen3-0.6B-flash/", dtype="bfloat16")  # doctest: +SKIP
        'converted 311 tensors (1.50GB) from Qwen3-0.6B into Qwen3-0.6B-flash; copied 7 files'
        >>> convert("s3://bucket/hf/Qwen3-0.6B", "Qwen3-0.6B-flash/")      # doctest: +SKIP
        >>> convert("Qwen3-0.6B-flash/", "s3://bucket/flash/Qwen3-0.6B")   # doctest: +SKIP
    """
    import torch
    from tqdm import tqdm

    from ..checkpoint import holds_flash
    from ..stores import is_remote
    from ..writer import CheckpointWriter
    from .sources import open_source

    if is_remote(dst):
        return upload(src, dst, dtype=dtype, overwrite=overwrite, copy_files=copy_files, progress=progress)
    source = open_source(src)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst}: exists and is not a directory")
    if holds_flash(dst) and not overwrite:
        raise DestinationError(f"{dst}: already holds a flash checkpoint; pass --overwrite to replace it")
    extras = _extras_to_copy(source, dst, overwrite) if copy_files else []
    cast_to = getattr(torch, dtype) if dtype else None

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
        with bar, CheckpointWriter(dst, overwrite=overwrite) as writer:
            n_tensors = _write_weights(source, writer, cast_to, bar)
            for path in extras:  # before the commit: a failed copy leaves no checkpoint behind
                source.copy_extra(path, dst)
    except BaseException:
        if created:  # the writer discarded its files; do not leave the directory it made behind
            shutil.rmtree(dst, ignore_errors=True)
        raise

    size = tqdm.format_sizeof(source.nbytes, "B")
    summary = f"converted {_plural(n_tensors, 'tensor')} ({size}) from {source.path} into {dst}"
    if extras:
        summary += f"; copied {_plural(len(extras), 'file')}"
    if copy_files and source.skipped_dirs:
        summary += f"; did not copy subdirectories: {', '.join(p.name for p in source.skipped_dirs)}"
    return summary


def _write_weights(source, writer, cast_to, bar) -> int:
    """Stream every weight file of ``source`` into ``writer``; returns the number of tensors."""
    n_tensors = 0
    for shard in source.shards:
        end = bar.n + source.shard_bytes(shard)
        for batch in source.batches(shard, BATCH_BYTES):
            read = sum(t.nbytes for t in batch.values())
            writer.write(_cast(batch, cast_to) if cast_to is not None else batch)
            n_tensors += len(batch)
            bar.update(min(read, end - bar.n))
        bar.update(end - bar.n)  # the file's header and padding
    return n_tensors


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


def upload(src, dst: str, *, dtype=None, overwrite: bool = False, copy_files: bool = True,
           progress: bool = True) -> str:
    """Uploads the flash checkpoint in directory ``src`` to ``dst`` (``s3://bucket/prefix``)
    with its other top-level files (config, tokenizer, ...; not with ``copy_files=False``).
    Any other ``src`` (safetensors, PyTorch, a Hugging Face directory, a URL), or a
    ``dtype`` cast, is first converted by :func:`convert` into a temporary directory.
    Returns a one-line summary.

    Raises FlashError (``dst`` holds a checkpoint and not ``overwrite``; not s3://),
    FlashRemoteError (S3 failed, naming the object), SourceError / FlashFormatError.

    Example:
        >>> upload("Qwen3-0.6B-flash/", "s3://bucket/flash/Qwen3-0.6B")   # doctest: +SKIP
        'uploaded 311 tensors (1.50GB) from Qwen3-0.6B-flash to s3://bucket/flash/Qwen3-0.6B; 7 other files'
    """
    from tqdm import tqdm

    from ..checkpoint import holds_flash
    from ..flash import read_index
    from ..stores import is_remote
    from .model_files import is_weight_file
    from .upload import upload_checkpoint

    if is_remote(src) or dtype or not holds_flash(src):
        with tempfile.TemporaryDirectory(prefix="flashtensors-upload-") as tmp:
            local = Path(tmp) / "checkpoint"
            convert(src, local, dtype=dtype, copy_files=copy_files, progress=progress)
            return upload(local, dst, overwrite=overwrite, copy_files=copy_files, progress=progress)
    src = Path(src)
    extras = [p for p in sorted(src.iterdir()) if p.is_file() and not p.name.startswith(".")
              and not is_weight_file(p)] if copy_files else []
    index = read_index(src)
    bar = tqdm(total=index.total_bytes, unit="B", unit_scale=True, desc="upload", file=sys.stderr,
               disable=None if progress else True)
    with bar:
        result = upload_checkpoint(src, dst, overwrite=overwrite, extras=extras, progress=bar.update)
    size = tqdm.format_sizeof(result.data_bytes, "B")
    summary = f"uploaded {len(index.tensors)} tensors ({size}) from {src} to {dst}"
    if extras:
        summary += f"; {len(extras)} other file{'' if len(extras) == 1 else 's'}"
    if result.deleted:
        summary += f"; deleted {result.deleted} data file{'' if result.deleted == 1 else 's'} of the old checkpoint"
    return summary
