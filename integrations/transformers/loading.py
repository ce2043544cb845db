"""The hooks that make ``from_pretrained`` read weights through flashtensors.

Each hook wraps one transformers internal and changes only what concerns the
weight files; everything else (meta-device init, ``device_map`` computed by
accelerate, dtype casting, key renaming, tied weights, missing and unexpected keys,
disk offload) stays transformers' own work:

* ``resolve_checkpoint_files`` answers "which files?" with the flash index of a
  local directory that holds a flash checkpoint, and with the Hub location
  ``hf://org/name@revision`` (a :class:`HubWeights`) for a model named by Hub repo ID whose
  repository holds a flash checkpoint or safetensors: its weights are streamed from the
  Hub into the Hub cache, never downloaded first. Other models resolve as transformers
  resolves them (safetensors shards through their index, a variant, ...).
* ``get_dtype`` lets ``dtype="auto"`` read the dtype from the flash index, or from the
  safetensors header as flashtensors parses it, when the config names none.
* ``load_pretrained_model`` reads the tensors with ``flash.load_dict``, each straight
  onto the device transformers placed its parameter on, and hands them to
  transformers as a state dict: the flash checkpoint, the Hub repository's weights, or
  (``settings["safetensors"]``) the safetensors files transformers resolved.

``patching.patch()`` installs them; nothing here is called directly.
"""

from __future__ import annotations

import inspect
import os
import threading

import torch
from transformers import modeling_utils

from flashtensors import INDEX_FILENAME, flash
from flashtensors.checkpoint import checkpoint_files, holds_flash, open_checkpoint
from flashtensors.device_map import normalize_device_map
from flashtensors.errors import FlashDeviceError, FlashFormatError
from flashtensors.formats import find_format
from flashtensors.formats.index import torch_dtype
from flashtensors.formats.safetensors import SUFFIX
from flashtensors.stores import open_store

from ..hub import hub_location

# Set by patching.patch(): ``verify`` is passed to flash.load_dict; ``safetensors`` says
# whether safetensors files are read by flashtensors too (else left to transformers).
settings = {"verify": False, "safetensors": True}
_warmup_lock = threading.Lock()  # loads that switch off transformers' GPU warm-up take turns


def flash_dir(checkpoint_files) -> str | None:
    """The flash checkpoint directory if ``checkpoint_files`` came from ``resolve_checkpoint_files``."""
    if checkpoint_files and len(checkpoint_files) == 1:
        directory, name = os.path.split(checkpoint_files[0])
        if name == INDEX_FILENAME:
            return directory
    return None


class HubWeights(list):
    """What ``resolve_checkpoint_files`` answers for a model named by Hub repo ID: a list
    holding its Hub location (``hf://org/name@revision``), with the index of the checkpoint
    there (``.index``, from the Hub's listing and the files' headers), the Hub cache
    (``.cache_dir``, None for huggingface_hub's) and transformers' own resolution, for the
    loads flashtensors leaves to it (``.resolve_by_transformers()``)."""

    def __init__(self, location: str, index, cache_dir, resolve_by_transformers):
        super().__init__([location])
        self.location, self.index, self.cache_dir = location, index, cache_dir
        self.resolve_by_transformers = resolve_by_transformers


def _hub_weights(original, args, kwargs, arguments) -> HubWeights | None:
    """The HubWeights of a model named by Hub repo ID whose weights flashtensors reads, or
    None (a local path; offline, where transformers finds the cached files, which are then
    read by flashtensors as local files; a token, proxies or a subfolder given to
    from_pretrained; a repository without a flash checkpoint or safetensors)."""
    from huggingface_hub import constants

    download = arguments["download_kwargs"] or {}
    location = hub_location(arguments["pretrained_model_name_or_path"], download.get("revision"))
    if (location is None or download.get("local_files_only") or constants.is_offline_mode()
            or download.get("token") not in (None, True) or download.get("proxies") or download.get("subfolder")
            or download.get("force_download") or arguments["use_safetensors"] is False):
        return None
    cache_dir = download.get("cache_dir")
    store = open_store(location, cache_dir=cache_dir)
    found = find_format(store)
    if found is None or (found.kind != "flash" and not settings["safetensors"]):
        return None
    index, _ = found.format.index(store, found)
    return HubWeights(location, index, cache_dir, lambda: original(*args, **kwargs))


def safetensors_files(checkpoint_files) -> list | None:
    """``checkpoint_files`` if they are local safetensors files flashtensors should read
    (``settings["safetensors"]`` on), else None. Example: ``["/m/model.safetensors"]``."""
    if not settings["safetensors"] or not checkpoint_files:
        return None
    files = [os.fspath(f) for f in checkpoint_files]
    if all(f.endswith(SUFFIX) and os.path.isfile(f) for f in files):
        return files
    return None


def safetensors_sources(files: list) -> list:
    """What to pass to ``flash.load_dict`` to read exactly ``files``: their directory when
    it holds these files and nothing else flashtensors would read instead (so that all
    shards are read as one checkpoint), else each file on its own.

    Example: ``safetensors_sources(["/m/a.safetensors", "/m/b.safetensors"])  # ["/m"]``.
    """
    directories = {os.path.dirname(os.path.abspath(f)) for f in files}
    if len(files) > 1 and len(directories) == 1:
        directory = directories.pop()
        kind, found = checkpoint_files(directory) or (None, [])
        if kind == "safetensors" and sorted(map(os.path.abspath, found)) == sorted(map(os.path.abspath, files)):
            return [directory]
    return list(files)


def _engine_places(placement) -> bool:
    """Whether flashtensors can read onto every device of ``placement`` (the CPU and
    available CUDA devices)."""
    try:
        normalize_device_map(placement)
    except FlashDeviceError:
        return False
    return True


def _refuse_verify(files: list) -> None:
    if settings["verify"]:
        raise FlashFormatError(
            f"{files[0]}: patch(verify=True) checks the CRC-32C checksums of flash checkpoints, and "
            f"safetensors files have none; convert the model (`flashtensors convert`), or patch with "
            f"verify=False, or with safetensors=False to leave safetensors to transformers"
        )


def _bind(original, args, kwargs) -> inspect.BoundArguments:
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


def resolve_checkpoint_files(original, *args, **kwargs):
    """Wraps ``_get_resolved_checkpoint_files``: a local directory holding a flash checkpoint
    resolves to ``[<dir>/flash_index.json]`` unless the caller asked for safetensors
    (``use_safetensors=True``), a ``variant``, a GGUF file or the config's explicit weights file."""
    arguments = _bind(original, args, kwargs).arguments
    path = arguments["pretrained_model_name_or_path"]
    if (
        path is not None
        and arguments["gguf_file"] is None
        and arguments["variant"] is None
        and arguments["use_safetensors"] is not True
        and arguments["transformers_explicit_filename"] is None
    ):
        subfolder = (arguments["download_kwargs"] or {}).get("subfolder") or ""
        directory = os.path.join(str(path), subfolder)
        if os.path.isdir(directory) and holds_flash(directory):
            return [os.path.join(directory, INDEX_FILENAME)], None
        hub = _hub_weights(original, args, kwargs, arguments)
        if hub is not None:
            return hub, None
    return original(*args, **kwargs)


def get_dtype(original, *args, **kwargs):
    """Wraps ``_get_dtype``: for ``dtype="auto"`` without a dtype in the config, transformers
    inspects the checkpoint's tensors; give it meta tensors shaped like the flash index's, or
    like the first safetensors file's header (the file transformers would open)."""
    bound = _bind(original, args, kwargs)
    arguments = bound.arguments
    files = arguments["checkpoint_files"]
    directory = flash_dir(files)
    safetensors = safetensors_files(files) if directory is None else None
    hub = files if isinstance(files, HubWeights) else None
    if (
        (directory is not None or safetensors is not None or hub is not None)
        and arguments["state_dict"] is None
        and arguments["dtype"] == "auto"
        and getattr(arguments["config"], "dtype", None) is None
    ):
        if hub is not None:
            index = hub.index
        else:
            index = flash.read_index(directory) if directory is not None else open_checkpoint(safetensors[0]).index
        arguments["state_dict"] = {
            name: torch.empty(entry.shape, dtype=torch_dtype(entry.dtype), device="meta")
            for name, entry in index.tensors.items()
        }
        return original(*bound.args, **bound.kwargs)
    return original(*args, **kwargs)


def device_placement(model, load_config, names) -> dict | str:
    """Where each checkpoint tensor in ``names`` should be read to: the device transformers
    gives the parameter it loads into (after its key renaming), ``"cpu"`` for disk-offloaded
    ones and for conversions transformers runs on the CPU. Example: ``{"lm_head.weight": 0, ...}``."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    from transformers.integrations.accelerate import expand_device_map

    device_map = load_config.device_map
    if not device_map:
        return "cpu"
    devices = set(device_map.values())
    if len(devices) == 1:
        device = devices.pop()
        return "cpu" if device == "disk" else device

    mapping = load_config.weight_mapping or []
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    on_cpu = {p for c in converters if getattr(c, "force_cpu", False) for p in c.source_patterns}
    prefix = model.base_model_prefix
    meta = model.state_dict()

    targets = {}
    for name in names:
        target, pattern = rename_source_key(name, renamings, converters, prefix, meta)
        if target not in meta and name in meta:  # as transformers: keep the name, maybe add the prefix
            target, pattern = rename_source_key(name, [], [], prefix, meta)
        targets[name] = (target, pattern in on_cpu)
    expanded = expand_device_map(device_map, [target for target, _ in targets.values()])
    return {
        name: "cpu" if forced or expanded[target] == "disk" else expanded[target]
        for name, (target, forced) in targets.items()
    }


def load_pretrained_model(original, *args, **kwargs):
    """Wraps ``PreTrainedModel._load_pretrained_model``: reads a flash checkpoint, or the
    resolved safetensors files, onto the planned devices and passes them on as
    ``state_dict``, so transformers loads them as usual."""
    bound = _bind(original, args, kwargs)
    arguments = bound.arguments
    files = arguments["checkpoint_files"]
    if isinstance(files, HubWeights):
        return _load_from_hub(original, bound, files)
    if arguments["state_dict"] is not None:
        return original(*args, **kwargs)
    directory = flash_dir(files)
    if directory is not None:
        names = list(flash.read_index(directory).tensors)
        placement = device_placement(arguments["model"], arguments["load_config"], names)
        state_dict = flash.load_dict(directory, device_map=placement, verify=settings["verify"])
        # Nothing left for transformers to read; disk-offloaded weights are re-saved by it.
        arguments["checkpoint_files"] = None
    else:
        safetensors = safetensors_files(files)
        if safetensors is None or arguments["load_config"].device_mesh is not None:
            # Tensor parallelism (tp_plan): transformers reads each rank's slices itself.
            return original(*args, **kwargs)
        _refuse_verify(safetensors)
        sources = safetensors_sources(safetensors)
        names = [name for source in sources for name in open_checkpoint(source).index.tensors]
        placement = device_placement(arguments["model"], arguments["load_config"], names)
        if not _engine_places(placement):  # e.g. "mps": transformers can read there, flashtensors cannot
            return original(*args, **kwargs)
        state_dict = {}
        for source in sources:
            state_dict.update(flash.load_dict(source, device_map=placement))
        # checkpoint_files stay: transformers points disk-offloaded weights at them, as unpatched.
    return _hand_to_transformers(original, bound, state_dict)


def _load_from_hub(original, bound: inspect.BoundArguments, hub: HubWeights):
    """Streams the Hub repository's weights onto the planned devices (and into the Hub
    cache) and passes them on as ``state_dict``; where flashtensors cannot place them
    (tensor parallelism, a device it cannot target), or where the caller gave a state dict,
    transformers downloads and reads the files as unpatched."""
    arguments = bound.arguments
    placement = device_placement(arguments["model"], arguments["load_config"], list(hub.index.tensors))
    if (arguments["state_dict"] is not None or arguments["load_config"].device_mesh is not None
            or not _engine_places(placement)):
        arguments["checkpoint_files"], arguments["load_config"].sharded_metadata = hub.resolve_by_transformers()
        return original(*bound.args, **bound.kwargs)
    if hub.index.kind != "flash":
        _refuse_verify(hub)
    state_dict = flash.load_dict(hub.location, device_map=placement, verify=settings["verify"],
                                 cache_dir=hub.cache_dir)
    arguments["checkpoint_files"] = None  # nothing left for transformers to read
    return _hand_to_transformers(original, bound, state_dict)


def _hand_to_transformers(original, bound: inspect.BoundArguments, state_dict: dict):
    """transformers' own loading of ``state_dict`` (already on the planned devices)."""
    bound.arguments["state_dict"] = state_dict
    if not any(t.is_cuda for t in state_dict.values()):
        return original(*bound.args, **bound.kwargs)
    # The weights already sit on their GPUs: transformers' allocator warm-up would reserve
    # the model's size a second time.
    with _warmup_lock:
        warmup = modeling_utils.caching_allocator_warmup
        modeling_utils.caching_allocator_warmup = lambda *a, **k: None
        try:
            return original(*bound.args, **bound.kwargs)
        finally:
            modeling_utils.caching_allocator_warmup = warmup
