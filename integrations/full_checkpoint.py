"""Reading a whole checkpoint for a serving engine's own ``load_weights``: a flash checkpoint,
or a directory's (or URL's) safetensors as they are, onto the worker's device, read once by
the tensor-parallel group when there is one. Shared by the vLLM and SGLang loaders.

Example::

    options = FlashLoaderConfig.from_extra_config({"threads": 8})
    root = check_weights_dir("/models/qwen")              # or a URL (options.weights)
    tensors = stage(root, layout_of(root), torch.device("cuda:0"), options, lambda where: None, log)
    model.load_weights(hand_over(tensors))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from flashtensors import flash
from flashtensors.checkpoint import checkpoint_files
from flashtensors.errors import FlashDeviceError, FlashFormatError
from flashtensors.formats import detect
from flashtensors.stores import is_remote, open_store

from .loader_options import FlashLoaderConfig, verify_needs_flash

# The process group that reads a checkpoint once and shares it among the tensor-parallel
# ranks, for staging on a device (None: each rank reads the whole checkpoint itself).
GroupFor = Callable[[torch.device], object]


def layout_of(root: Path | str, timeout: float | None = None) -> str:
    """``"full"`` (a flash checkpoint) or ``"safetensors"``: what a local directory or URL holds,
    from its index or headers, or ``"none"`` for a local directory with neither. Raises
    FlashRemoteError (missing, forbidden, unreachable) naming the URL, or FlashFormatError."""
    # The files, checked to exist (an HF index naming a missing shard is named here).
    found = checkpoint_files(root, timeout)
    if found is None and is_remote(root):
        detect(open_store(root, timeout))  # raises, naming what the server lacks
    kind = (found or ("none",))[0]
    return "full" if kind == "flash" else kind


def no_weights_error(root, also: str = "") -> FlashFormatError:
    """The error for a model directory holding nothing flashtensors reads (``also``: more it looked for)."""
    return FlashFormatError(
        f"{root}: holds no weights flashtensors reads (no flash_index.json, {also}no *.safetensors); "
        f"convert .bin or .pt weights with `flashtensors convert`, or save them with flash.save_dict")


def stage(root: Path | str, layout: str, device: torch.device, options: FlashLoaderConfig, group_for: GroupFor,
          log: logging.Logger) -> dict:
    """The checkpoint's tensors (``layout`` from :func:`layout_of`: a flash checkpoint, else the
    safetensors) on ``device``, or in host memory with ``staging="cpu"`` or when they do not
    fit on the device beside the model. Read afresh on every call: nothing is kept between."""
    if options.verify and layout == "safetensors":
        raise verify_needs_flash(root)
    cpu = torch.device("cpu")
    where = cpu if options.staging == "cpu" else device
    remote = {"timeout": options.timeout, "cache_dir": options.cache_dir,
              "connections": options.connections} if is_remote(root) else {}
    try:
        return flash.load_dict(root, where, verify=options.verify, threads=options.threads,
                               group=group_for(where), **remote)
    except FlashDeviceError as e:  # the whole checkpoint does not fit beside the model (on some rank)
        if where == cpu:
            raise
        log.warning("flashtensors: %s; staging the checkpoint in host memory instead", e)
        return flash.load_dict(root, cpu, threads=options.threads, group=group_for(cpu), **remote)  # verified


def hand_over(tensors: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields ``tensors``' items, dropping each from the dict as it goes, so that a tensor's
    memory can be freed as soon as ``load_weights`` has copied it (not only after the last)."""
    for name in list(tensors):
        yield name, tensors.pop(name)


def tp_group_for(tp_size: int, distributed: bool, tp_group: Callable[[], object]) -> GroupFor:
    """The ``group_for`` of :func:`stage` for an engine's tensor-parallel group (vLLM's and
    SGLang's ``get_tp_group()`` alike): its NCCL group for device staging, its gloo group for
    host staging; none at tensor-parallel size 1 or with ``distributed=False``."""
    if tp_size == 1 or not distributed:
        return lambda where: None

    def group_for(where: torch.device):
        tp = tp_group()
        return tp.device_group if where.type == "cuda" else tp.cpu_group

    return group_for


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters were created (the worker's device, or CPU)."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
