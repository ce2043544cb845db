"""Loading a flash checkpoint: resolve devices, plan, allocate once per device, read
with the native core, hand back tensors as views."""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import lru_cache

from . import _native
from .checkpoint import open_checkpoint, opened_for_load
from .device_map import device_codes, device_of_code, normalize_device_map, uncovered_error
from .errors import FlashDeviceError, FlashError, FlashFormatError, FlashRemoteError
from .format import ALIGNMENT, DTYPE_NAMES, INDEX_FILENAME, torch_dtype
from .memory import allocate_host
from .remote import is_url, resolve_timeout
from .remote.tier import resolve_cache_dir

log = logging.getLogger("flashtensors")

CHUNK_BYTES = 16 << 20
# Pinned staging memory for GPU loads: two CHUNK_BYTES buffers (and a block) per thread, pinned once per
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


@lru_cache(maxsize=None)
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


def load(path, device_map=None, *, threads: int | None = None, io: str = "auto", group=None,
         timeout=None, cache_dir=None) -> dict:
    """See :func:`flashtensors.flash.load_dict`."""
    if io not in IO_MODES:
        raise ValueError(f"io must be one of {IO_MODES}, not {io!r}")
    n_threads = resolve_threads(threads)
    timeout = resolve_timeout(timeout)
    if group is not None:
        from . import group as collective

        def body(c):
            index, paths = open_checkpoint(path, timeout)
            return load_index(path, index, paths, device_map, n_threads, io, read=c.reader(index, timeout))

        return collective.run(group, path, body)

    cache_dir = resolve_cache_dir(cache_dir)

    def once():
        with opened_for_load(path, timeout, cache_dir, n_threads) as (index, paths, tees):
            return load_index(path, index, paths, device_map, n_threads, io, timeout=timeout, tees=tees)

    return with_retry(path, once)


def _local_read(path, plan, paths, sizes, buffers, n_threads, io, timeout=None, index=None, tees=None) -> bool:
    """Reads a laid-out plan into its buffers (``(address, owner)`` per device of
    ``sizes``) here, from files or URLs; True: this process may fill the page cache.
    ``io`` is a native mode; ``tees``: per path, a native FileTee the pieces read are
    also written to (the local tier), or None."""
    bases = [address for address, _ in buffers]
    timeout = resolve_timeout(timeout)
    execute(path, lambda threads: plan.execute(paths, bases, threads, CHUNK_BYTES, io, timeout, tees), n_threads,
            to_gpu=any(code >= 0 for code, _ in sizes), index=index, paths=paths)
    return True


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


def load_index(path, index, paths, device_map, n_threads: int, io: str = "auto", only=None, read=None,
               timeout=None, tees=None) -> dict:
    """Loads the tensors of a read index (those named in ``only``, or all) from ``paths``
    (files or URLs); ``read`` (default: here, with the native engine, writing what it
    reads to ``tees`` too) fills the laid-out buffers."""
    started = time.perf_counter()
    plan = new_plan(index, device_map, only)
    residency = _residency(plan, paths, io)
    mapped = _files_to_map(plan, paths, residency, index, io)
    sizes = plan.layout(list(mapped), ALIGNMENT)
    _check_capacity(sizes, path)
    buffers = [_allocate(nbytes, device_of_code(code)) for code, nbytes in sizes]
    native_io = "auto" if io == "mmap" else io  # mapping was decided above; the rest is read
    if read is None:
        def read(*args):
            return _local_read(*args, timeout=timeout, index=index, tees=tees)
    may_fill_cache = read(path, plan, paths, sizes, buffers, n_threads, native_io)

    cold = [paths[f] for f in plan.files_used(False) if f not in mapped and residency.get(f, 1.0) < 0.5]
    if cold and CACHE_AFTER_COLD_LOAD and may_fill_cache:
        threading.Thread(target=_read_into_page_cache, args=(cold,), daemon=True,
                         name="flashtensors-cache").start()
    out = assemble(plan, buffers, {f: (m.data_ptr(), m) for f, m in mapped.items()})
    if log.isEnabledFor(logging.DEBUG):
        total = sum(t.nbytes for t in out.values())
        seconds = time.perf_counter() - started
        log.debug("loaded %d tensors, %.2f GB from %s in %.3f s (%.2f GB/s)", len(out), total / 1e9, path,
                  seconds, total / 1e9 / max(seconds, 1e-9))
    return out


def new_plan(index, device_map, only=None):
    """The native plan of a read index: the tensors named in ``only`` (or all), each
    placed on its device by ``device_map``."""
    dmap = normalize_device_map(device_map)
    selection = None
    if only is not None:
        selection = [i for i, name in enumerate(index.table.names()) if name in only]
    native = _native.module()
    try:
        return native.LoadPlan(index.table, selection, device_codes(dmap))
    except native.UncoveredTensor as e:
        raise uncovered_error(e.args[0], dmap) from None


def assemble(plan, buffers, mappings) -> dict:
    """The tensors of a laid-out plan, in its order, as views: of ``buffers`` (one
    ``(address, owner)`` per device, as ``plan.layout`` listed them) for read regions, of
    ``mappings`` (``{file: (address, owner)}``) for mapped ones. Every region is a
    storage of its own, so tensors share storage only where they did when saved
    (torch.save, safetensors and transformers see them as they were). Empty tensors are
    fresh allocations."""
    import torch

    from_dlpack = torch.from_dlpack
    direct, grouped = plan.views(buffers, mappings, _dlpack_dtypes())
    tensors = [None if c is None else from_dlpack(c) for c in direct]
    for region, members in grouped:
        storage = from_dlpack(region)
        for position, offset in members:
            tensors[position] = _view(storage, offset, plan.entry(position))
    for position, t in enumerate(tensors):
        if t is None:
            _, dtype, shape, *_ = plan.entry(position)
            tensors[position] = torch.empty(shape, dtype=torch_dtype(DTYPE_NAMES[dtype]),
                                            device=device_of_code(plan.device(position)))
    return dict(zip(plan.names(), tensors))


@lru_cache(maxsize=None)
def _dlpack_dtypes() -> list:
    """Per spec dtype, its DLPack (code, bits) as this torch reads them back faithfully,
    or None: such tensors are handed over as bytes and viewed as their dtype."""
    import torch

    native = _native.module()
    out = []
    for name in DTYPE_NAMES:
        dtype = getattr(torch, name, None)
        try:
            probe = torch.empty(1, dtype=dtype)
            code = native.dlpack_dtype(torch.utils.dlpack.to_dlpack(probe))
            ok = torch.from_dlpack(torch.utils.dlpack.to_dlpack(probe)).dtype == dtype
        except (TypeError, RuntimeError, BufferError):
            code, ok = None, False
        out.append(code if ok else None)
    return out


def execute(path, read, threads: int, *, to_gpu: bool, index=None, paths=None) -> None:
    """Runs ``read(threads)``, a native read of checkpoint ``path`` in CHUNK_BYTES pieces,
    turning the core's errors into FlashErrors (a remote one names the tensor it was
    reading when ``index`` and ``paths`` are given). Reads to a GPU stage through the
    pinned ring, which bounds the thread count."""
    if to_gpu:
        threads = min(threads, PINNED_RING_BYTES // (2 * CHUNK_BYTES))
    native = _native.module()
    try:
        read(threads)
    except native.RemoteError as e:
        raise FlashRemoteError(str(e) + _tensor_named(index, paths, e.url, e.offset), e.status, e.url) from None
    except OSError as e:
        raise FlashFormatError(f"{path}: reading the checkpoint failed: {e}") from None
    except RuntimeError as e:
        raise FlashError(f"{path}: copying the checkpoint to the GPU failed: {e}") from None


def _tensor_named(index, paths, url: str, offset: int) -> str:
    """`` (tensor 'name')`` for the tensor at ``offset`` of the data file at ``url``."""
    if index is None or paths is None:
        return ""
    from .remote.checkpoint import tensor_at
    from .remote.http import shown

    files = [f for f, p in enumerate(paths) if shown(p) == url]
    name = tensor_at(index, files[0], offset) if files else None
    return f" (tensor {name!r})" if name is not None else ""


def _residency(plan, paths, io: str) -> dict:
    """Fraction of each used local data file in the page cache (sampled), when io is
    "auto" (remote files are not in it: they are read)."""
    if io != "auto":
        return {}
    resident = _native.module().resident_fraction
    return {f: resident(paths[f]) for f in plan.files_used(False) if not is_url(paths[f])}


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


def _files_to_map(plan, paths, residency: dict, index, io: str) -> dict:
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
    out = {}
    for f in plan.files_used(True):
        if is_url(paths[f]):
            continue
        if io == "mmap" or residency[f] >= 0.5:
            try:
                storage = torch.UntypedStorage.from_file(paths[f], shared=False, nbytes=index.files[f].size)
            except RuntimeError as e:
                raise FlashFormatError(f"{paths[f]}: cannot map the data file: {e}") from None
            out[f] = torch.empty(0, dtype=torch.uint8).set_(storage)
    return out


def _check_capacity(sizes, path) -> None:
    """Refuses, before reading a byte, a load that cannot fit on its GPU. ``sizes``:
    (device code, bytes) per device buffer."""
    import torch

    for code, nbytes in sizes:
        if code < 0:
            continue
        device = device_of_code(code)
        free, _ = torch.cuda.mem_get_info(device)
        reserved_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if nbytes > free + reserved_free:
            raise FlashDeviceError(
                f"{path}: needs {nbytes / 2**30:.2f} GiB on {device}, "
                f"only {(free + reserved_free) / 2**30:.2f} GiB is free")


def _allocate(nbytes: int, device):
    """One buffer per device. Host buffers get ALIGNMENT slack so reads into them can
    bypass the page cache (O_DIRECT needs aligned addresses). Returns (aligned address,
    tensor owning the memory)."""
    import torch

    if device.type == "cpu":
        return allocate_host(nbytes, ALIGNMENT)
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    synchronize_before_copies(device)
    return buffer.data_ptr(), buffer


def synchronize_before_copies(device) -> None:
    """Our copies run on the core's own streams: work already queued on torch's stream,
    which may still use the target memory (or recycled memory), must finish first."""
    import torch

    torch.cuda.current_stream(device).synchronize()


def _view(storage, offset: int, entry):
    """A tensor inside a region handed back as bytes; ``entry`` as ``plan.entry`` gives it."""
    _, dtype, shape, strides, _, _, length, _ = entry
    data = storage[offset:offset + length].view(torch_dtype(DTYPE_NAMES[dtype]))
    return data.view(shape) if strides is None else data.as_strided(shape, strides)

