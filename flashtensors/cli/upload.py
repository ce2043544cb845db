"""``flashtensors convert SRC s3://bucket/prefix``: upload a flash checkpoint (SRC itself,
or SRC converted into a temporary directory first) with the model's other files."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def upload(src, dst: str, *, dtype=None, overwrite: bool = False, copy_files: bool = True, progress: bool = True,
           convert=None) -> str:
    """Uploads the flash checkpoint in directory ``src`` to ``dst`` (``s3://bucket/prefix``)
    with its other top-level files (config, tokenizer, ...; not with ``copy_files=False``).
    Any other ``src`` (safetensors, PyTorch, a Hugging Face directory, a URL), or a
    ``dtype`` cast, is first converted by ``convert`` into a temporary directory.
    Returns a one-line summary.

    Raises FlashError (``dst`` holds a checkpoint and not ``overwrite``; not s3://),
    FlashRemoteError (S3 failed, naming the object), SourceError / FlashFormatError.

    Example:
        >>> upload("Qwen3-0.6B-flash/", "s3://bucket/flash/Qwen3-0.6B")   # doctest: +SKIP
        'uploaded 311 tensors (1.50GB) from Qwen3-0.6B-flash to s3://bucket/flash/Qwen3-0.6B; 7 other files'
    """
    from tqdm import tqdm

    from flashtensors.checkpoint import holds_flash
    from flashtensors.flash import read_index
    from flashtensors.locations import is_remote
    from flashtensors.remote.upload import upload_checkpoint
    from flashtensors.weight_names import is_weight_file

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
