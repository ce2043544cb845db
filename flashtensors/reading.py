"""The read step of every load: the bytes of an opened checkpoint's data files into the
load's memory, by this process or shared with a ``torch.distributed`` group (see
flashtensors/group.py), with the other work that must see those bytes inside it:

- checksums (``verify=True``): the CRC-32C of each tensor is computed over the bytes that
  were loaded (local copies of the local tier included), once per byte for the whole
  group, before anything is kept;
- the local tier (a remote checkpoint with ``cache_dir``): the pieces read are also written
  to new local copies (in a group, by the lowest rank of each machine), committed only
  once the load and its checks succeeded.

Tuning values are read when a load runs, so setting them reaches every path.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import _native
from .errors import FlashChecksumError, FlashDeviceError, FlashError, FlashFormatError, FlashRemoteError

CHUNK_BYTES = 16 << 20
# Pinned staging memory for GPU loads: two blocks of CHUNK_BYTES (and 8 KiB) per thread, pinned once per
# process with the load's first GPU current and shared by local and remote loads (csrc/pinned_pool.h), so GPU
# loads use at most PINNED_RING_BYTES // (2 * CHUNK_BYTES) threads.
PINNED_RING_BYTES = 512 << 20
# Checksums of memory are computed in slices of this much (spread over the load's threads).
CHECK_SLICE_BYTES = 64 << 20


def read(ckpt, ops, owners, options, *, collective=None, wanted=None, mapped=None, checked=None) -> bool:
    """Fills the load's memory: ``ops`` are native read ops ``(file, offset, length, dest
    address, device code)`` into ``owners`` (device code -> ``(base address, 1-D uint8
    tensor owning it)``). ``wanted``: names of the tensors loaded (None: all); ``mapped``:
    ``{file: address}`` of data files mapped instead of read (their tensors are checked
    from the mapping); ``checked``: the names of the tensors these ops load, to check
    (default: ``wanted``). Returns whether this process may fill the page cache afterwards
    (in a group: the lowest rank of its machine).

    Raises FlashChecksumError (with ``verify``), FlashRemoteError, FlashFormatError.
    """
    if collective is not None:
        return _read_collectively(collective, ckpt, ops, owners, options, wanted, mapped)
    tier = _tier(ckpt, wanted)
    if tier is None:  # the common case, without the context manager's cost (small loads)
        _read_and_check(ckpt, ops, options, None, wanted, mapped, checked)
        return True
    with _kept_if_good(tier, options):
        _read_and_check(ckpt, ops, options, tier, wanted, mapped, checked)
    return True


def _read_and_check(ckpt, ops, options, tier, wanted, mapped, checked) -> None:
    execute(ckpt, lambda threads: _native.module().execute_plan(
        ckpt.sources, ops, threads, CHUNK_BYTES, options.io, options.timeout, tier and tier.tees,
        options.connections),
        options.threads, to_gpu=any(device >= 0 for *_, device in ops))
    if options.verify:
        check_memory(ckpt, _checked_tensors(ckpt, wanted if checked is None else checked),
                     locate(ops, mapped or {}), options.threads)


def _read_collectively(c, ckpt, ops, owners, options, wanted, mapped) -> bool:
    from .group import needs_of_ops

    if mapped and options.verify:
        raise FlashError("internal: a collective read that checks maps no files")
    needs = needs_of_ops(ops, owners)
    agreed = c.agree(ckpt.index.table.fingerprint(), needs, None)
    leader = c.is_host_leader(agreed["hosts"])
    covered = _covered(ckpt, agreed["ranges"])
    tier = _tier(ckpt, {t.name for t in covered}) if leader else None
    for device in {n.dest.device for n in needs if n.dest.device.type == "cuda"}:
        synchronize_before_copies(device)
    with _kept_if_good(tier, options):
        bad = c.exchange(ckpt.sources, agreed["ranges"], needs, options.threads, options.io, options.timeout,
                         chunk_bytes=CHUNK_BYTES, tees=tier and tier.tees, checks=covered if options.verify else None,
                         connections=options.connections)
        if bad:
            raise checksum_error(ckpt, bad)
    return leader


@contextmanager
def _kept_if_good(tier, options):
    """Commits the local-tier copies ``tier`` writes (a CachedLoad, or None) once the block,
    the read and its checks, succeeded; removes them if it raised."""
    try:
        yield
    except BaseException:
        if tier is not None:
            tier.abort()
        raise
    if tier is not None:
        tier.commit(options.threads, options.timeout, options.connections)


def _tier(ckpt, wanted):
    """The local-tier copies this load writes (a remote checkpoint with a cache_dir), or None."""
    tier = getattr(ckpt.store, "tier", None)
    if tier is None:
        return None
    from .stores.tier import CachedLoad

    load = CachedLoad(ckpt, wanted)
    return load if load.tees else None


def _checked_tensors(ckpt, wanted) -> list:
    return [t for t in ckpt.index.tensors.values() if wanted is None or t.name in wanted]


def _covered(ckpt, ranges) -> list:
    """The tensors whose bytes lie within the merged ``(file, start, end)`` ranges (every
    tensor some rank of the group loads), in (file, offset) order."""
    starts = [(f, s) for f, s, _ in ranges]
    out = []
    for t in ckpt.index.tensors.values():
        i = bisect.bisect_right(starts, (t.file, t.offset)) - 1
        if t.length == 0 or (i >= 0 and ranges[i][0] == t.file and t.offset + t.length <= ranges[i][2]):
            out.append(t)
    return sorted(out, key=lambda t: (t.file, t.offset))


def locate(ops, mapped: dict):
    """A function giving, for bytes ``(file, offset, length)`` of the checkpoint, ``(address,
    device code)`` of where a load put them (None if it did not)."""
    by_file: dict = {}
    for file, offset, length, dest, device in ops:
        by_file.setdefault(file, []).append((offset, length, dest, device))
    for runs in by_file.values():
        runs.sort()
    starts = {f: [r[0] for r in runs] for f, runs in by_file.items()}

    def where(file, offset, length):
        if file in mapped:
            return mapped[file] + offset, -1
        runs = by_file.get(file)
        if not runs:
            return None
        i = bisect.bisect_right(starts[file], offset) - 1
        if i < 0:
            return None
        start, run_length, dest, device = runs[i]
        if offset + length > start + run_length:
            return None
        return dest + offset - start, device

    return where


def check_memory(ckpt, tensors, where, threads: int) -> None:
    """Compares the CRC-32C of each of ``tensors`` (index entries), computed over the memory
    ``where`` says it was loaded to, with the index; FlashChecksumError naming those that
    differ. GPU memory is copied back to the host a slice at a time."""
    crc = _native.module().crc32c

    def one(t) -> int:
        if t.length == 0:
            return 0
        place = where(t.file, t.offset, t.length)
        if place is None:
            raise FlashError(f"internal: tensor {t.name!r} was not loaded, so it cannot be checked")
        address, device = place
        return crc(address, t.length) if device < 0 else _crc_of_device_memory(address, t.length, device)

    def batch(part) -> list:
        return [(t, one(t)) for t in part]

    parts = _balanced(list(tensors), max(1, threads))
    with ThreadPoolExecutor(max_workers=len(parts) or 1) as pool:  # the native CRC releases the GIL
        results = [r for part in pool.map(batch, parts) for r in part]
    bad = [t for t, value in results if value != t.crc32c]
    if bad:
        raise checksum_error(ckpt, bad)


def _balanced(tensors: list, n: int) -> list:
    """``tensors`` cut into at most ``n`` runs of about equal bytes."""
    total = sum(t.length for t in tensors)
    parts, part, size = [], [], 0
    for t in tensors:
        part.append(t)
        size += t.length
        if size * n >= total * (len(parts) + 1) and len(parts) < n - 1:
            parts.append(part)
            part = []
    if part:
        parts.append(part)
    return parts


def _crc_of_device_memory(address: int, length: int, device: int) -> int:
    import torch

    crc, done = 0, 0
    host = torch.empty(min(length, CHECK_SLICE_BYTES), dtype=torch.uint8)
    while done < length:
        n = min(length - done, CHECK_SLICE_BYTES)
        view = _device_bytes(address + done, n, device)
        host[:n].copy_(view)
        crc = _native.module().crc32c(host.data_ptr(), n, crc)
        done += n
    return crc


def _device_bytes(address: int, length: int, device: int):
    """A uint8 tensor over ``length`` bytes of GPU memory at ``address`` (no copy)."""
    import torch

    class _Array:  # the CUDA array interface: torch wraps it without a copy
        __cuda_array_interface__ = {"shape": (length,), "typestr": "|u1", "data": (address, False), "version": 3}

    with torch.cuda.device(device):
        return torch.as_tensor(_Array(), device=f"cuda:{device}")


def checksum_error(ckpt, bad) -> FlashChecksumError:
    """The FlashChecksumError for index entries ``bad`` (the same message on every rank)."""
    bad = sorted(bad, key=lambda t: (t.file, t.offset, t.name))
    pairs = [(t.name, ckpt.described(t.file)) for t in bad]
    shown = ", ".join(f"{n!r} in {f}" for n, f in pairs[:5])
    more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    return FlashChecksumError(f"{ckpt.location}: checksum mismatch for {len(pairs)} tensor(s): {shown}{more}", pairs)


def execute(ckpt, read, threads: int, *, to_gpu: bool) -> None:
    """Runs ``read(threads)``, a native read of ``ckpt``'s data files, turning the core's
    errors into FlashErrors (a remote one names the tensor it was reading). Reads to a GPU
    stage through the pinned ring, which bounds the thread count."""
    if to_gpu:
        threads = max(1, min(threads, PINNED_RING_BYTES // (2 * CHUNK_BYTES)))
    native = _native.module()
    try:
        read(threads)
    except native.RemoteError as e:
        raise FlashRemoteError(str(e) + _tensor_named(ckpt, e.url, e.offset), e.status, e.url) from None
    except OSError as e:
        raise FlashFormatError(f"{ckpt.location}: reading the checkpoint failed: {e}") from None
    except native.CudaError as e:  # pinning the staging ring, a copy, a stream: the device's side
        raise FlashDeviceError(f"{ckpt.location}: copying the checkpoint to the GPU failed: {e}") from None
    except RuntimeError as e:
        raise FlashError(f"{ckpt.location}: copying the checkpoint to the GPU failed: {e}") from None


def _tensor_named(ckpt, url: str, offset: int) -> str:
    """`` (tensor 'name')`` for the tensor at ``offset`` of the data file at ``url``."""
    from .stores.http_client import shown

    files = [f for f, p in enumerate(ckpt.sources) if shown(p) == url]
    name = ckpt.tensor_at(files[0], offset) if files else None
    return f" (tensor {name!r})" if name is not None else ""


def synchronize_before_copies(device) -> None:
    """Our copies run on the core's own streams: work already queued on torch's stream,
    which may still use the target memory (or recycled memory), must finish first."""
    import torch

    torch.cuda.current_stream(device).synchronize()


@contextmanager
def ordered_on_devices(devices):
    """Around reads into memory that already exists (a model's parameters): every stream of
    each device, not only torch's current one (vLLM's, a user's), finishes its work before
    the copies start, which may still read or write that memory; and once the block ends
    the bytes are on the device for work on any stream (the core waits for its copies; the
    second device-wide wait covers copies a group's exchange queued on torch's streams)."""
    import torch

    for device in devices:
        torch.cuda.synchronize(device)
    yield
    for device in devices:
        torch.cuda.synchronize(device)
