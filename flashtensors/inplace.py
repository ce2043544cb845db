"""Loading checkpoint tensors straight into tensors that already exist (a model's
parameters): one read per tensor into its memory, no buffer of our own."""

from __future__ import annotations

from . import _native
from .checkpoint import open_checkpoint, opened_for_load
from .errors import FlashDeviceError, FlashFormatError
from .format import torch_dtype
from .loader import (
    CHUNK_BYTES,
    execute,
    load_index,
    resolve_threads,
    synchronize_before_copies,
    with_retry,
)
from .remote import resolve_timeout
from .remote.tier import resolve_cache_dir


def load_into(path, targets: dict, *, threads: int | None = None, group=None, timeout=None,
              cache_dir=None) -> None:
    """See :func:`flashtensors.flash.load_into`."""
    n_threads = resolve_threads(threads)
    timeout = resolve_timeout(timeout)
    if group is not None:
        from . import group as collective

        return collective.run(group, path, lambda c: _load_into_collectively(c, path, targets, n_threads, timeout))

    cache_dir = resolve_cache_dir(cache_dir)

    def once():
        with opened_for_load(path, timeout, cache_dir, n_threads, wanted=set(targets)) as (index, paths, tees):
            _read(path, index, paths, targets, n_threads, timeout, tees)

    with_retry(path, once)


def _read(path, index, paths, targets: dict, n_threads: int, timeout, tees) -> None:
    """Reads ``targets`` from the opened checkpoint (``tees``: see load_index)."""
    direct, strided = _plan(path, index, targets)
    ops = [(e.file, e.offset, e.length, targets[name].data_ptr(), _device_code(targets[name]))
           for name, e in direct]
    gpus = {t.device for t in targets.values() if t.device.type == "cuda"}
    for device in gpus:
        synchronize_before_copies(device)
    execute(path, lambda threads: _native.module().execute_plan(paths, ops, threads, CHUNK_BYTES,
                                                                timeout=timeout, tees=tees),
            n_threads, to_gpu=bool(gpus), index=index, paths=paths)
    if strided:
        # Not one run of bytes on both sides: load just those (same index, same
        # files) and copy them over.
        loaded = load_index(path, index, paths, "cpu", n_threads, only={name for name, _ in strided},
                            timeout=timeout, tees=tees)
        for name, _ in strided:
            targets[name].copy_(loaded[name])


def _load_into_collectively(c, path, targets: dict, n_threads: int, timeout: float) -> None:
    import torch

    from .group import Need

    index, paths = open_checkpoint(path, timeout)
    direct, strided = _plan(path, index, targets)
    needs = [Need(e.file, e.offset, e.length, targets[name].view(-1).view(torch.uint8)) for name, e in direct]
    staged = [(name, e, torch.empty(e.length, dtype=torch.uint8)) for name, e in strided]
    needs += [Need(e.file, e.offset, e.length, raw) for _, e, raw in staged if e.length]
    agreed = c.agree(index.table.fingerprint(), needs, None)
    for device in {t.device for t in targets.values() if t.device.type == "cuda"}:
        synchronize_before_copies(device)
    c.exchange(paths, agreed["ranges"], needs, n_threads, "auto", timeout)
    for name, e, raw in staged:  # bytes as saved, then viewed with the saved strides
        dtype = torch_dtype(e.dtype)
        if not e.length:
            saved = torch.empty(e.shape, dtype=dtype)
        elif e.strides is None:
            saved = raw.view(dtype).view(e.shape)
        else:
            saved = raw.view(dtype).as_strided(e.shape, e.strides)
        targets[name].copy_(saved)


def _device_code(tensor) -> int:
    return -1 if tensor.device.type == "cpu" else tensor.device.index


def _plan(path, index, targets: dict):
    """(name, entry) of the targets read straight into their memory, and of those that
    need a copy (their bytes are not one run on both sides)."""
    missing = [n for n in targets if n not in index.tensors]
    if missing:
        raise FlashFormatError(f"{path}: no tensor {missing[0]!r} in the checkpoint"
                               + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    direct, strided = [], []
    for name, target in targets.items():
        entry = index.tensors[name]
        if target.dtype != torch_dtype(entry.dtype) or tuple(target.shape) != entry.shape:
            raise FlashFormatError(
                f"{path}: tensor {name!r} is {entry.dtype}{list(entry.shape)} in the checkpoint, "
                f"the target is {str(target.dtype).removeprefix('torch.')}{list(target.shape)}")
        if target.device.type not in ("cpu", "cuda"):
            raise FlashDeviceError(f"tensor {name!r}: cannot load into a tensor on {target.device}")
        if entry.strides is not None or not target.is_contiguous():
            strided.append((name, entry))
        elif entry.length:
            direct.append((name, entry))
    return direct, strided
