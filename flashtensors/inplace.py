"""Loading checkpoint tensors straight into tensors that already exist (a model's
parameters): one read per tensor into its memory, no buffer of our own."""

from __future__ import annotations

from . import _native
from .checkpoint import open_checkpoint
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


def load_into(path, targets: dict, *, threads: int | None = None) -> None:
    """See :func:`flashtensors.flash.load_into`."""
    n_threads = resolve_threads(threads)

    def once():
        index, paths = open_checkpoint(path)
        ops, strided = _plan(path, index, targets)
        gpus = {t.device for t in targets.values() if t.device.type == "cuda"}
        for device in gpus:
            synchronize_before_copies(device)
        execute(path, lambda threads: _native.module().execute_plan(paths, ops, threads, CHUNK_BYTES),
                n_threads, to_gpu=bool(gpus))
        if strided:
            # Not one run of bytes on both sides: load just those (same index, same
            # files) and copy them over.
            loaded = load_index(path, index, paths, "cpu", n_threads, only=set(strided))
            for name in strided:
                targets[name].copy_(loaded[name])

    with_retry(path, once)


def _plan(path, index, targets: dict):
    """Read ops straight into the targets, and the names that need a copy instead."""
    missing = [n for n in targets if n not in index.tensors]
    if missing:
        raise FlashFormatError(f"{path}: no tensor {missing[0]!r} in the checkpoint"
                               + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    ops, strided = [], []
    for name, target in targets.items():
        entry = index.tensors[name]
        if target.dtype != torch_dtype(entry.dtype) or tuple(target.shape) != entry.shape:
            raise FlashFormatError(
                f"{path}: tensor {name!r} is {entry.dtype}{list(entry.shape)} in the checkpoint, "
                f"the target is {str(target.dtype).removeprefix('torch.')}{list(target.shape)}")
        if target.device.type not in ("cpu", "cuda"):
            raise FlashDeviceError(f"tensor {name!r}: cannot load into a tensor on {target.device}")
        if entry.strides is not None or not target.is_contiguous():
            strided.append(name)
        elif entry.length:
            code = -1 if target.device.type == "cpu" else target.device.index
            ops.append((entry.file, entry.offset, entry.length, target.data_ptr(), code))
    return ops, strided
