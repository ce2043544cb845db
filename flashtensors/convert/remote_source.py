"""A remote checkpoint as ``flashtensors convert`` reads it (the remote counterpart of a
local :class:`flashtensors.sources.Source`): its data files as shards, read a batch of
tensors at a time with the native reader, and its other files (config, tokenizer, ...).

Example:
    >>> src = open_remote_source("s3://bucket/models/qwen3")          # doctest: +SKIP
    >>> for shard in src.shards:                                      # doctest: +SKIP
    ...     for name, tensor in src.read(shard): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ..checkpoint import Checkpoint, open_checkpoint
from .model_files import fetch_files, other_files

# Tensors are fetched in batches of about this many bytes (the memory a conversion holds).
BATCH_BYTES = 256 << 20


@dataclass(frozen=True)
class RemoteSource:
    """The data files (``shards``: names) of a remote checkpoint and its other files
    (``extras``: names, as PurePosixPath)."""

    path: str
    ckpt: Checkpoint
    shards: tuple
    extras: tuple = ()
    skipped_dirs: tuple = ()
    threads: int = 8

    @property
    def nbytes(self) -> int:
        """Total size of the data files, in bytes."""
        return sum(o.size for o in self.ckpt.objects)

    def shard_bytes(self, shard: str) -> int:
        return self.ckpt.objects[self.ckpt.names.index(shard)].size

    def batches(self, shard: str, limit: int = BATCH_BYTES):
        """The tensors of data file ``shard`` as dicts of about ``limit`` bytes, in file
        order, each fetched with one native load. Tensors sharing bytes (ties) stay in
        one batch, so they stay tied."""
        from ..loader import load_checkpoint
        from ..options import LoadOptions

        options = LoadOptions.resolve(self.path, threads=self.threads, timeout=self.ckpt.store.timeout,
                                      cache_dir=False)
        f = self.ckpt.names.index(shard)
        entries = sorted((t for t in self.ckpt.index.tensors.values() if t.file == f), key=lambda t: t.offset)
        batch, size, end = set(), 0, 0
        for t in entries + [None]:
            if batch and (t is None or (size + t.length > limit and t.offset >= end)):
                yield load_checkpoint(self.ckpt, "cpu", options, only=batch)
                batch, size = set(), 0
            if t is not None:
                batch.add(t.name)
                size += t.length
                end = max(end, t.offset + t.length)

    def copy_extra(self, extra, directory) -> None:
        fetch_files(self.ckpt.store, [extra.name], directory)


def open_remote_source(url: str, timeout=None, threads: int = 8) -> RemoteSource:
    """The checkpoint at ``url`` (flash, safetensors, or a Hugging Face directory) as a
    conversion source; FlashRemoteError / FlashFormatError as for loading it."""
    ckpt = open_checkpoint(url, timeout=timeout)
    extras = () if ckpt.store.single else tuple(PurePosixPath(n) for n in other_files(ckpt.store))
    return RemoteSource(url, ckpt, tuple(ckpt.names), extras, threads=threads)
