"""Loading a flash checkpoint: resolve devices, plan, allocate once per device, read
with the native core, hand back tensors as views."""

from __future__ import annotations

import logging
import os
import threading
import time

from . import _native
from .device_map import device_for, normalize_device_map
from .errors import FlashDeviceError, FlashError, FlashFormatError
from .format import ALIGNMENT, INDEX_FILENAME, data_file_paths, read_index, torch_dtype
from .plan import make_plan, read_ops

log = logging.getLogger("flashtensors")

CHUNK_BYTES = 16 << 20
# Pinned staging memory for GPU loads: two CHUNK_BYTES buffers per thread, pinned once per
# process, so GPU loads use at most PINNED_RING_BYTES // (2 * CHUNK_BYTES) threads.
PINNED_RING_BYTES = 512 << 20
MAX_THREADS = 256
# After a load that read files from the disk (O_DIRECT leaves nothing in the page cache),
# have the kernel read them into the cache in the background, so that the next load of
# the same checkpoint (a restarted or second replica) is warm. The benchmark turns it off
# to keep its cold runs cold.
CACHE_AFTER_COLD_LOAD = True
# How bytes reach host memory. "auto" maps cached files and reads the rest, choosing
# the page cache or O_DIRECT per piece; the others force one way (for benchmarks).
IO_MODES = ("auto", "mmap", "buffered", "direct")


def default_threads() -> int:
    """I/O threads per load: enough to keep a disk queue and the copy engines busy."""
    return max(4, min(16, os.cpu_count() or 4))


def resolve_threads(threads) -> int:
    """The I/O thread count to use: ``threads`` checked, or the default for None."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise FlashError(f"threads must be an integer from 1 to {MAX_THREADS}, not {threads!r}")
    return threads


def load(path, device_map=None, *, threads: int | None = None, io: str = "auto") -> dict:
    """See :func:`flashtensors.flash.load_dict`."""
    if io not in IO_MODES:
        raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
    n_threads = resolve_threads(threads)

    def once():
        index = read_index(path)
        return load_index(path, index, data_file_paths(path, index), device_map, n_threads, io)

    return with_retry(path, once)


def with_retry(path, once):
    """Runs ``once()``, the reading of one checkpoint version, again (up to 3 times) when
    a save into the same directory replaced the checkpoint while it read: the files its
    index named can vanish. Errors of a checkpoint that did not change are raised."""
    for attempt in range(3):
        version = _index_identity(path)
        try:
            return once()
        except (FlashFormatError, OSError) as e:
            if attempt == 2 or _index_identity(path) == version:
                if isinstance(e, FlashError):
                    raise
                raise FlashFormatError(f"{path}: reading the checkpoint failed: {e}") from None
            log.debug("%s changed while loading; loading the new version", path)


def _index_identity(path):
    try:
        st = os.stat(os.path.join(path, INDEX_FILENAME))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_index(path, index, paths, device_map, n_threads: int, io: str = "auto", only=None) -> dict:
    """Loads the tensors of a read index (those named in ``only``, or all) from ``paths``."""
    started = time.perf_counter()
    entries = [e for e in index.tensors.values() if only is None or e.name in only]
    dmap = normalize_device_map(device_map)
    devices = {e.name: device_for(e.name, dmap) for e in entries}
    dtypes = {e.dtype: torch_dtype(e.dtype) for e in entries}
    residency = _residency(entries, paths, io)
    mapped = _files_to_map(entries, devices, paths, residency, index, io)
    plans = make_plan(entries, devices, frozenset(mapped))
    _check_capacity(plans, path)

    buffers, ops = {}, []
    for plan in plans:
        buffer, address = _allocate(plan.nbytes, plan.device)
        buffers[plan.device] = (buffer, address - buffer.data_ptr())
        code = -1 if plan.device.type == "cpu" else plan.device.index
        ops.extend(read_ops(plan, address, code))
    execute(path, paths, ops, n_threads, "auto" if io == "mmap" else io)

    read_files = {r.file for p in plans for r in p.regions if not r.mapped}
    cold = [paths[f] for f in sorted(read_files) if residency.get(f, 1.0) < 0.5]
    if cold and CACHE_AFTER_COLD_LOAD:
        threading.Thread(target=_read_into_page_cache, args=(cold,), daemon=True,
                         name="flashtensors-cache").start()
    out = assemble(entries, plans, devices, dtypes, buffers, mapped)
    total = sum(e.length for e in entries)
    seconds = time.perf_counter() - started
    log.debug("loaded %d tensors, %.2f GB from %s in %.3f s (%.2f GB/s)", len(out), total / 1e9, path,
              seconds, total / 1e9 / max(seconds, 1e-9))
    return out


def assemble(entries, plans, devices, dtypes, buffers, mapped) -> dict:
    """The tensors of a loaded plan, in the order of ``entries``, as views: of
    ``buffers[device]`` (``(buffer, shift)`` pairs) for read regions, of ``mapped[file]``
    (1-D uint8 tensors over a file's bytes) for mapped ones. Empty tensors are fresh
    allocations. ``dtypes`` maps spec dtype names to torch dtypes."""
    import torch

    tensors = {}
    for plan in plans:
        for region in plan.regions:
            if region.mapped:
                storage = _region_storage(mapped[region.file], region.start, region.nbytes)
            else:
                buffer, shift = buffers[plan.device]
                storage = _region_storage(buffer, shift + region.buffer_offset, region.nbytes)
            for e in region.members:
                tensors[e.name] = _view(storage, e.offset - region.start, e, dtypes[e.dtype])
    out = {}
    for e in entries:
        out[e.name] = tensors[e.name] if e.name in tensors else \
            torch.empty(e.shape, dtype=dtypes[e.dtype], device=devices[e.name])
    return out


def execute(path, paths, ops, threads: int, io: str = "auto") -> None:
    """Runs native read ops in CHUNK_BYTES pieces, turning the core's errors into
    FlashErrors about ``path``. Ops to a GPU stage through the pinned ring, which bounds
    the thread count."""
    if any(op[4] >= 0 for op in ops):
        threads = min(threads, PINNED_RING_BYTES // (2 * CHUNK_BYTES))
    try:
        _native.module().execute_plan(paths, ops, threads, CHUNK_BYTES, io)
    except OSError as e:
        raise FlashFormatError(f"{path}: reading the checkpoint failed: {e}") from None
    except RuntimeError as e:
        raise FlashError(f"{path}: copying the checkpoint to the GPU failed: {e}") from None


def _residency(entries, paths, io: str) -> dict:
    """Fraction of each used data file in the page cache (sampled), when io is "auto"."""
    if io != "auto":
        return {}
    resident = _native.module().resident_fraction
    return {f: resident(paths[f]) for f in sorted({e.file for e in entries if e.length})}


def _read_into_page_cache(paths, window: int = 2 << 20) -> None:
    # One WILLNEED per 2 MiB: the kernel caps each request at its readahead size, so a
    # single whole-file request would cache only the start of the file.
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            for offset in range(0, os.fstat(fd).st_size, window):
                os.posix_fadvise(fd, offset, window, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _files_to_map(entries, devices, paths, residency: dict, index, io: str) -> dict:
    """Data files whose host-bound tensors become zero-copy views of a private mapping.

    Worth it when the file is in the page cache: mapping costs no copy and no fresh
    memory, as with safetensors. A file mostly on disk is read instead (large O_DIRECT
    reads beat page faults). The mapping is copy-on-write, so writing to a tensor never
    touches the file, and saves never rewrite a data file in place.
    Returns {file number: 1-D uint8 tensor over the mapping}.
    """
    import torch

    if io not in ("auto", "mmap"):
        return {}
    host_files = {e.file for e in entries if e.length and devices[e.name].type == "cpu"}
    out = {}
    for f in sorted(host_files):
        if io == "mmap" or residency[f] >= 0.5:
            try:
                storage = torch.UntypedStorage.from_file(paths[f], shared=False, nbytes=index.files[f].size)
            except RuntimeError as e:
                raise FlashFormatError(f"{paths[f]}: cannot map the data file: {e}") from None
            out[f] = torch.empty(0, dtype=torch.uint8).set_(storage)
    return out


def _check_capacity(plans, path) -> None:
    """Refuses, before reading a byte, a load that cannot fit on its GPU."""
    import torch

    for plan in plans:
        if plan.device.type != "cuda":
            continue
        free, _ = torch.cuda.mem_get_info(plan.device)
        reserved_free = torch.cuda.memory_reserved(plan.device) - torch.cuda.memory_allocated(plan.device)
        if plan.nbytes > free + reserved_free:
            raise FlashDeviceError(
                f"{path}: needs {plan.nbytes / 2**30:.2f} GiB on {plan.device}, "
                f"only {(free + reserved_free) / 2**30:.2f} GiB is free")


def _allocate(nbytes: int, device):
    """One buffer per device. Host buffers get ALIGNMENT slack so reads into them can
    bypass the page cache (O_DIRECT needs aligned addresses). Returns (tensor, aligned address)."""
    import torch

    if device.type == "cpu":
        buffer = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8)
        address = -(-buffer.data_ptr() // ALIGNMENT) * ALIGNMENT
        return buffer, address
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    synchronize_before_copies(device)
    return buffer, buffer.data_ptr()


def synchronize_before_copies(device) -> None:
    """Our copies run on the core's own streams: work already queued on torch's stream,
    which may still use the target memory (or recycled memory), must finish first."""
    import torch

    torch.cuda.current_stream(device).synchronize()


def _region_storage(buffer, offset: int, nbytes: int):
    """A 1-D uint8 tensor over ``buffer[offset:offset+nbytes]`` with a storage of its own
    (kept alive by, and keeping alive, the device buffer): tensors in different regions
    do not share storage, so torch.save, safetensors and transformers treat them as the
    separate tensors they were when saved."""
    from torch.utils.dlpack import from_dlpack, to_dlpack

    return from_dlpack(to_dlpack(buffer[offset:offset + nbytes]))


def _view(storage, rel: int, entry, dtype):
    data = storage[rel:rel + entry.length].view(dtype)
    if entry.strides is None:
        return data.view(entry.shape)
    return data.as_strided(entry.shape, entry.strides)

