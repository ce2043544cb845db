"""Loading a checkpoint into new memory (``flash.load_dict``), in one screen:

    location --open-->  Checkpoint   store + format + index (flashtensors/checkpoint.py)
    index    --plan-->  LoadPlan     devices, regions, read ops (native)
    plan     --alloc--> buffers      one allocation per device; cached local files mapped instead
    plan     --read-->  bytes        here or shared with a group, checked, teed (flashtensors/reading.py)
    buffers  --views--> {name: tensor}
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import lru_cache

from . import _native, reading
from .checkpoint import open_checkpoint
from .device_map import device_codes, device_of_code, normalize_device_map, uncovered_error
from .errors import FlashDeviceError, FlashError, FlashFormatError
from .files import version_stamp
from .formats.flash import ALIGNMENT, INDEX_FILENAME
from .formats.index import DTYPE_NAMES, torch_dtype
from .memory import allocate_host
from .options import LoadOptions

log = logging.getLogger("flashtensors")

# After a load that read files from the disk (O_DIRECT leaves nothing in the page cache),
# have the kernel read them into the cache in the background, so that the next load of
# the same checkpoint (a restarted or second replica) is warm. The benchmark turns it off
# to keep its cold runs cold. Read when a load runs.
CACHE_AFTER_COLD_LOAD = True
# Data files smaller than this are read, never mapped, and their page-cache residency is
# not asked: copying them costs less than the mapping and the residency check would.
SMALL_FILE_BYTES = 256 << 10


def load(location, device_map=None, options: LoadOptions | None = None, **settings) -> dict:
    """See :func:`flashtensors.flash.load_dict`: ``options`` resolved for ``location``, or
    ``settings`` to resolve (``io``: one of options.IO_MODES, for benchmarks and tests)."""
    options = options or LoadOptions.resolve(location, **settings)
    return run_load(location, options, lambda c: _load(location, device_map, options, c))


def run_load(location, options: LoadOptions, body):
    """Runs ``body(collective or None)``, one load of ``location``: collectively when
    ``options.group`` is set (every rank raises when one fails), else again when the
    checkpoint was replaced by a save while it was read (:func:`with_retry`). The
    keep-alive connections its remote reads kept between calls are closed at the end."""
    try:
        if options.group is not None:
            from . import group as collective

            return collective.run(options.group, location, body)
        return with_retry(location, lambda: body(None))
    finally:
        _native.module().release_idle_connections()


def _load(location, device_map, options: LoadOptions, collective) -> dict:
    ckpt = open_checkpoint(location, timeout=options.timeout, cache_dir=options.cache_dir)
    options.check_kind(location, ckpt.kind)
    return load_checkpoint(ckpt, device_map, options, collective=collective)


def load_checkpoint(ckpt, device_map, options: LoadOptions, only=None, collective=None) -> dict:
    """Loads the tensors of an opened checkpoint (those named in ``only``, or all)."""
    started = time.perf_counter()
    plan = new_plan(ckpt.index, device_map, only)
    io = options.io
    residency = _residency(plan, ckpt, io)
    # A group that checks reads everything through its exchange (each byte checked once by the group).
    mapped = _files_to_map(plan, ckpt, residency, io) if collective is None or not options.verify else {}
    sizes = plan.layout(list(mapped), ALIGNMENT)
    _check_capacity(sizes, ckpt.location)
    buffers = [_allocate(nbytes, device_of_code(code)) for code, nbytes in sizes]
    owners = {code: buffer for (code, _), buffer in zip(sizes, buffers)}
    ops = plan.read_ops([address for address, _ in buffers])
    native_options = options if io != "mmap" else _with_io(options, "auto")  # mapping was decided above
    may_fill_cache = reading.read(ckpt, ops, owners, native_options, collective=collective,
                                  wanted=only, mapped={f: m.data_ptr() for f, m in mapped.items()})

    cold = [ckpt.sources[f] for f in plan.files_used(False)
            if f not in mapped and residency.get(f, 1.0) < 0.5 and ckpt.here[f]]
    if cold and CACHE_AFTER_COLD_LOAD and may_fill_cache:
        threading.Thread(target=_read_into_page_cache, args=(cold,), daemon=True,
                         name="flashtensors-cache").start()
    out = assemble(plan, buffers, {f: (m.data_ptr(), m) for f, m in mapped.items()})
    if log.isEnabledFor(logging.DEBUG):
        total = sum(t.nbytes for t in out.values())
        seconds = time.perf_counter() - started
        log.debug("loaded %d tensors, %.2f GB from %s in %.3f s (%.2f GB/s)", len(out), total / 1e9,
                  ckpt.location, seconds, total / 1e9 / max(seconds, 1e-9))
    return out


def _with_io(options: LoadOptions, io: str) -> LoadOptions:
    import dataclasses

    return dataclasses.replace(options, io=io)


def with_retry(location, once):
    """Runs ``once()``, the reading of one checkpoint version, again (up to 3 times) when
    a save into the same local directory replaced the checkpoint while it read: the
    files its index named can vanish. Errors of a checkpoint that did not change are
    raised."""
    for attempt in range(3):
        version = _index_identity(location)
        try:
            return once()
        except (FlashFormatError, OSError) as e:
            if attempt == 2 or _index_identity(location) == version:
                if isinstance(e, FlashError):
                    raise
                raise FlashFormatError(f"{location}: reading the checkpoint failed: {e}") from None
            log.debug("%s changed while loading; loading the new version", location)


def _index_identity(location):
    """The flash index file's identity, for a local directory (None otherwise)."""
    if not isinstance(location, (str, os.PathLike)):
        return None
    try:
        return version_stamp(os.path.join(location, INDEX_FILENAME))
    except (OSError, TypeError, ValueError):
        return None


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
            name, dtype, shape, *_ = plan.entry(position)
            tensors[position] = torch.empty(shape, dtype=_torch_dtype_of(name, dtype),
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
            ok = ok and code[1] == 8 * probe.element_size()  # packed (fp4 pairs: 4 bits, 2 lanes): as bytes
        except (TypeError, RuntimeError, BufferError):
            code, ok = None, False
        out.append(code if ok else None)
    return out


def _residency(plan, ckpt, io: str) -> dict:
    """Fraction of each used data file in the page cache (sampled), when io is "auto" and
    the files are local (remote ones are read; local-tier copies are local files)."""
    if io != "auto":
        return {}
    resident = _native.module().resident_fraction
    return {f: resident(ckpt.sources[f]) for f in plan.files_used(False)
            if ckpt.here[f] and ckpt.index.files[f].size >= SMALL_FILE_BYTES}


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


def _files_to_map(plan, ckpt, residency: dict, io: str) -> dict:
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
        if not ckpt.here[f]:  # read over the network
            continue
        if io == "mmap" or residency.get(f, 0.0) >= 0.5:  # small files are not asked: read
            try:
                storage = torch.UntypedStorage.from_file(ckpt.sources[f], shared=False,
                                                         nbytes=ckpt.index.files[f].size)
            except RuntimeError as e:
                raise FlashFormatError(f"{ckpt.sources[f]}: cannot map the data file: {e}") from None
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
    reading.synchronize_before_copies(device)
    return buffer.data_ptr(), buffer


def _view(storage, offset: int, entry):
    """A tensor inside a region handed back as bytes; ``entry`` as ``plan.entry`` gives it."""
    name, dtype, shape, strides, _, _, length, _ = entry
    data = storage[offset:offset + length].view(_torch_dtype_of(name, dtype))
    return data.view(shape) if strides is None else data.as_strided(shape, strides)


def _torch_dtype_of(name: str, dtype: int):
    """The torch dtype of tensor ``name`` (spec dtype number ``dtype``); FlashFormatError
    naming the tensor and the dtype where this torch lacks it."""
    try:
        return torch_dtype(DTYPE_NAMES[dtype])
    except FlashFormatError as e:
        raise FlashFormatError(f"tensor {name!r}: {e}") from None
