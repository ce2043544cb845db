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

from . import resolve_timeout
from .checkpoint import RemoteCheckpoint, open_remote
from .files import fetch_files, other_files

# Tensors are fetched in batches of about this many bytes (the memory a conversion holds).
BATCH_BYTES = 256 << 20


@dataclass(frozen=True)
class RemoteSource:
    """The data files (``shards``: names) of a remote checkpoint and its other files
    (``extras``: names, as PurePosixPath)."""

    path: str
    ckpt: RemoteCheckpoint
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
        from ..loader import load_index

        f = self.ckpt.names.index(shard)
        entries = sorted((t for t in self.ckpt.index.tensors.values() if t.file == f), key=lambda t: t.offset)
        batch, size, end = set(), 0, 0
        for t in entries + [None]:
            if batch and (t is None or (size + t.length > limit and t.offset >= end)):
                yield load_index(self.path, self.ckpt.index, self.ckpt.data_urls, "cpu", self.threads,
                                 only=batch, timeout=self.ckpt.store.timeout)
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
    ckpt = open_remote(url, resolve_timeout(timeout))
    single = url.split("?", 1)[0].endswith(".safetensors")
    extras = () if single else tuple(PurePosixPath(n) for n in other_files(ckpt.store))
    return RemoteSource(url, ckpt, tuple(ckpt.names), extras, threads=threads)
