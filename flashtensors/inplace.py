"""Loading checkpoint tensors straight into tensors that already exist (a model's
parameters, ``flash.load_into``): one read per tensor into its memory, no buffer of our
own. The same path as :mod:`flashtensors.loader` (open, read, checks), with the targets'
memory as the destination."""

from __future__ import annotations

from . import reading
from .checkpoint import open_checkpoint
from .errors import FlashDeviceError, FlashFormatError
from .formats.index import torch_dtype
from .loader import load_checkpoint, run_load
from .options import LoadOptions


def load_into(location, targets: dict, options: LoadOptions | None = None) -> None:
    """See :func:`flashtensors.flash.load_into`; ``options`` resolved for ``location``."""
    options = options or LoadOptions.resolve(location)
    run_load(location, options, lambda c: _load_into(location, targets, options, c))


def _load_into(location, targets: dict, options: LoadOptions, collective) -> None:
    import torch

    ckpt = open_checkpoint(location, timeout=options.timeout, cache_dir=options.cache_dir)
    options.check_kind(location, ckpt.kind)
    direct, strided = _plan(location, ckpt.index, targets)
    if collective is not None:
        # Each target is its own destination; strided ones are staged as saved bytes and copied after.
        staged = {name: torch.empty(e.length, dtype=torch.uint8) for name, e in strided if e.length}
        owners = {("t", name): (targets[name].data_ptr(), targets[name].view(-1).view(torch.uint8))
                  for name, _ in direct}
        owners.update({("t", name): (raw.data_ptr(), raw) for name, raw in staged.items()})
        ops = [(e.file, e.offset, e.length, owners[("t", name)][0], ("t", name)) for name, e in direct]
        ops += [(e.file, e.offset, e.length, staged[name].data_ptr(), ("t", name)) for name, e in strided
                if e.length]
        with reading.ordered_on_devices({t.device for t in targets.values() if t.device.type == "cuda"}):
            reading.read(ckpt, ops, owners, options, collective=collective, wanted=set(targets))
        for name, e in strided:
            targets[name].copy_(_saved_view(staged.get(name), e))
        return
    ops = [(e.file, e.offset, e.length, targets[name].data_ptr(), _device_code(targets[name]))
           for name, e in direct]
    devices = {t.device for t in targets.values() if t.device.type == "cuda"}
    with reading.ordered_on_devices(devices):
        reading.read(ckpt, ops, {}, options, wanted=set(targets), checked={name for name, _ in direct})
    if strided:
        # Not one run of bytes on both sides: load just those (same checkpoint, same
        # options, checks included) and copy them over.
        loaded = load_checkpoint(ckpt, "cpu", options, only={name for name, _ in strided})
        for name, _ in strided:
            targets[name].copy_(loaded[name])


def _saved_view(raw, e):
    """A tensor's saved bytes (``raw``, None when empty) viewed with its saved dtype, shape and strides."""
    import torch

    dtype = torch_dtype(e.dtype)
    if raw is None:
        return torch.empty(e.shape, dtype=dtype)
    if e.strides is None:
        return raw.view(dtype).view(e.shape)
    return raw.view(dtype).as_strided(e.shape, e.strides)


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
