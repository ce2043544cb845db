"""Uploading a local flash checkpoint to ``s3://bucket/prefix`` through botocore.

Order makes a half-finished upload harmless: the model's other files first, then the data
files (multipart uploads, parts in parallel; an S3 object appears only when its upload
completes), then the index, last, in one PUT. Until the index is there, the prefix holds
no checkpoint (or still the previous one, whose data files are never overwritten: each
save names its data files anew). With ``overwrite``, data files the new index does not
name are deleted after it is in place.

Example:
    >>> upload_checkpoint("/models/qwen3-flash", "s3://bucket/models/qwen3")   # doctest: +SKIP
    UploadResult(files=9, data_bytes=1503238144, deleted=0)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import open_checkpoint
from ..errors import FlashError
from ..formats import FLASH
from ..formats.flash import DATA_SUFFIX, INDEX_FILENAME
from ..stores import open_store

# Multipart part size: S3 allows at most 10,000 parts (640 GB files at this size) and at
# least 5 MiB per part but the last.
PART_BYTES = 64 << 20


@dataclass
class UploadResult:
    files: int        # objects written, the index included
    data_bytes: int   # bytes of the data files
    deleted: int      # old data files removed (overwrite)


def upload_checkpoint(src, url: str, *, overwrite: bool = False, extras=(), threads: int = 8,
                      part_bytes: int = PART_BYTES, progress=None) -> UploadResult:
    """Uploads the flash checkpoint in directory ``src`` (and the local files ``extras``,
    such as config and tokenizer files) to ``url``, an ``s3://bucket/prefix``.

    ``progress(n)`` is called with each number of data bytes sent.

    Raises:
        FlashError: ``url`` is not an s3:// URL, or already holds a checkpoint and
            ``overwrite`` is not set.
        FlashFormatError: ``src`` is not a valid flash checkpoint.
        FlashRemoteError: S3 refused or failed a request (naming the object).
    """
    if not url.startswith("s3://"):
        raise FlashError(f"{url}: uploads go to s3:// URLs only (a web server takes no uploads)")
    ckpt = open_checkpoint(src, formats=[FLASH])
    index, raw_index, paths = ckpt.index, ckpt.found.small[INDEX_FILENAME], ckpt.sources
    store = open_store(url.rstrip("/"), 60.0)
    if store.single is not None:
        raise FlashError(f"{url}: names a .safetensors file; give the prefix (directory) to upload to")
    existing = store.stat(INDEX_FILENAME)
    if existing is not None and not overwrite:
        raise FlashError(f"{store.describe(INDEX_FILENAME)}: a checkpoint is already there; pass --overwrite "
                         "to replace it")
    written = 0
    for extra in extras:
        _put(store, Path(extra).name, Path(extra).read_bytes())
        written += 1
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for path, f in zip(paths, index.files):
            _upload_file(store, f.name, path, pool, part_bytes, progress)
            written += 1
    _put(store, INDEX_FILENAME, raw_index)  # last: now the prefix holds the new checkpoint
    deleted = 0
    if existing is not None:
        keep = {f.name for f in index.files}
        for name in store.list():
            if name.endswith(DATA_SUFFIX) and name not in keep:
                _call(store, name, store.s3.delete_object, Bucket=store.bucket, Key=store.key(name))
                deleted += 1
    return UploadResult(written + 1, sum(f.size for f in index.files), deleted)


def _put(store, name: str, body: bytes) -> None:
    _call(store, name, store.s3.put_object, Bucket=store.bucket, Key=store.key(name), Body=body)


def _upload_file(store, name: str, path: str, pool, part_bytes: int, progress) -> None:
    size = os.path.getsize(path)
    if size <= part_bytes:
        with open(path, "rb") as f:
            _put(store, name, f.read())
        if progress:
            progress(size)
        return
    key = store.key(name)
    upload_id = _call(store, name, store.s3.create_multipart_upload, Bucket=store.bucket, Key=key)["UploadId"]

    def part(number: int) -> dict:
        offset = (number - 1) * part_bytes
        with open(path, "rb") as f:
            f.seek(offset)
            body = f.read(min(part_bytes, size - offset))
        r = _call(store, name, store.s3.upload_part, Bucket=store.bucket, Key=key, UploadId=upload_id,
                  PartNumber=number, Body=body)
        if progress:
            progress(len(body))
        return {"PartNumber": number, "ETag": r["ETag"]}

    try:
        parts = list(pool.map(part, range(1, -(-size // part_bytes) + 1)))
        _call(store, name, store.s3.complete_multipart_upload, Bucket=store.bucket, Key=key, UploadId=upload_id,
              MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            store.s3.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
        except Exception:  # the upload failed already; S3's lifecycle rules clean up what is left
            pass
        raise


def _call(store, name: str, method, **kwargs):
    """``method`` (a method of the store's client) with the store's retries and deadline."""
    return store.call(name, method.__name__, **kwargs)
