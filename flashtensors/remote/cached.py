"""One load of a remote checkpoint through the local tier (``cache_dir=``): which data
files it reads from their local copies, which it streams from the network while the
native reader also writes them to new local copies, and, once the load succeeded, the
commit of those copies.

A copy is kept only when every byte of its file was written. A load writes copies of
the data files it reads whole (every tensor of the file loaded): the bytes the load
itself does not need (a safetensors header, alignment padding) are fetched after it, in
one native call. Files a load reads only some tensors of (``load_into`` of a subset) are
streamed without a copy: fetching the rest would turn a small load into a download.

Every byte of a copy comes from reads pinned to the object's version seen when the
checkpoint was opened (remote/versions.py: If-Match, and the answers' ETags checked), and
the copy is committed under that version's ETag: an object replaced mid-load fails the
load (or the fetch of the remaining bytes), so no copy ever mixes two versions.
"""

from __future__ import annotations

import logging

from .. import _native

log = logging.getLogger("flashtensors")

# Gaps closer than this are fetched as one range (re-reading the bytes between them).
MERGE_GAPS_BYTES = 1 << 20
# Gap bytes fetched per native call (the scratch buffer they land in).
FILL_BATCH_BYTES = 64 << 20


class CachedLoad:
    """What one load of ``ckpt`` (opened through a TieredStore: flashtensors/remote/tiered.py)
    writes to the local tier: ``.tees``, per data file a native FileTee or None (None when
    it writes nothing).

    ``wanted``: the names of the tensors the load reads (None: all).

    Example:
        >>> c = CachedLoad(open_checkpoint(url, cache_dir="/cache"), None)    # doctest: +SKIP
        >>> execute_plan(ckpt.sources, ops, 8, CHUNK_BYTES, tees=c.tees)      # doctest: +SKIP
        >>> c.commit(threads=8, timeout=30)                                   # doctest: +SKIP
    """

    def __init__(self, ckpt, wanted=None):
        self.ckpt = ckpt
        self.tier = ckpt.store.tier
        self.tees = None
        whole = whole_files(ckpt.index, wanted)
        tees = [None] * len(ckpt.names)
        for f, (name, info, here) in enumerate(zip(ckpt.names, ckpt.objects, ckpt.here)):
            if not here and f in whole and info.etag and info.size:
                tees[f] = self.tier.start(name, info.size)
        if any(tees):
            self.tees = tees

    def commit(self, threads: int, timeout: float, connections: int = 0) -> int:
        """After a successful load: fetches the bytes the load did not read of each file
        being copied (``connections`` requests in flight, 0 for the default), then commits
        every complete copy. Problems are logged, never raised (the load itself
        succeeded). Returns the number of files committed."""
        kept = 0
        for f, tee in enumerate(self.tees or []):
            if tee is None:
                continue
            name = self.ckpt.names[f]
            try:
                self._fill(f, tee, threads, timeout, connections)
            except OSError as e:  # the native RemoteError and IoError are OSErrors
                log.warning("not keeping a local copy of %s: fetching its remaining bytes failed: %s",
                            self.ckpt.store.describe(name), e)
            problem = tee.error() or ("bytes missing" if tee.missing() else "")
            if problem:
                log.warning("not keeping a local copy of %s: %s", self.ckpt.store.describe(name), problem)
                self.tier.discard(tee)
            elif self.tier.commit(tee, name, self.ckpt.objects[f]):
                kept += 1
        self.tees = None
        return kept

    def abort(self) -> None:
        """After a failed load: removes every part file (nothing partial is kept)."""
        for tee in self.tees or []:
            if tee is not None:
                self.tier.discard(tee)
        self.tees = None

    def _fill(self, f: int, tee, threads: int, timeout: float, connections: int) -> None:
        import numpy as np

        gaps = merge_gaps(tee.missing(), MERGE_GAPS_BYTES)
        url = self.ckpt.sources[f]
        for batch in batches(gaps, FILL_BATCH_BYTES):
            scratch = np.empty(sum(length for _, length in batch), dtype=np.uint8)
            ops, at = [], scratch.ctypes.data
            for offset, length in batch:
                ops.append((0, offset, length, at, -1))
                at += length
            _native.module().execute_plan([url], ops, threads, FILL_BATCH_BYTES, "auto", timeout, tees=[tee],
                                          connections=connections)


def whole_files(index, wanted) -> set:
    """Data files (by number) all of whose tensors are in ``wanted`` (all files for None).

    Example:
        >>> whole_files(flash.read_index("/models/m"), None)          # doctest: +SKIP
        {0}
    """
    files = set(range(len(index.files)))
    if wanted is None:
        return files
    for name, entry in index.tensors.items():
        if name not in wanted:
            files.discard(entry.file)
    return files


def merge_gaps(gaps, slack: int) -> list:
    """``(offset, length)`` ranges, sorted, with ranges less than ``slack`` bytes apart merged.

    Example:
        >>> merge_gaps([(0, 8), (100, 10), (5000, 1)], 1000)
        [(0, 110), (5000, 1)]
    """
    out = []
    for offset, length in gaps:
        if out and offset - (out[-1][0] + out[-1][1]) < slack:
            out[-1] = (out[-1][0], offset + length - out[-1][0])
        else:
            out.append((offset, length))
    return out


def batches(gaps, limit: int):
    """``gaps`` split into lists of at most ``limit`` bytes (a longer range alone, cut up).

    Example:
        >>> list(batches([(0, 5), (10, 5), (20, 12)], 10))
        [[(0, 5), (10, 5)], [(20, 10)], [(30, 2)]]
    """
    batch, size = [], 0
    for offset, length in gaps:
        while length:
            take = min(length, limit - size)
            batch.append((offset, take))
            size += take
            offset += take
            length -= take
            if size == limit:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
