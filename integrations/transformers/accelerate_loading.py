"""The hooks that make accelerate's ``load_checkpoint_in_model`` (and so
``load_checkpoint_and_dispatch``) read flash checkpoint directories.

accelerate finds a checkpoint's files inline in ``load_checkpoint_in_model`` (a weights
file, an ``*.index.json`` and its shards, or a directory holding one of them), then reads
each file with ``accelerate.utils.modeling.load_state_dict(file, device_map)`` and places
every tensor itself (device_map, dtype, disk offload, ``offload_state_dict``, tied
parameters, unexpected keys). Two small hooks keep all of that accelerate's:

* ``load_checkpoint_in_model``: a directory holding a flash checkpoint (or its
  ``flash_index.json``) is handed to accelerate as the checkpoint's first data file, so
  that accelerate takes its one-file route;
* ``load_state_dict``: for a flash checkpoint's data file, reads the whole checkpoint with
  ``flash.load_dict``, each tensor onto the device accelerate's ``device_map`` gives its
  module (``"disk"`` and unmapped tensors to the CPU, as accelerate does).

Everything else goes to accelerate unchanged. ``patching.patch()`` installs the hooks
when accelerate is installed; nothing here is called directly.

Example::

    import flashtensors
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    flashtensors.patch_transformers()
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model = load_checkpoint_and_dispatch(model, "/models/m-flash", device_map="auto")
"""

from __future__ import annotations

import inspect
import os
import sys

from flashtensors import INDEX_FILENAME, flash
from flashtensors.checkpoint import holds_flash, open_checkpoint

from . import loading
from .compat import check_accelerate


def flash_checkpoint_dir(checkpoint) -> str | None:
    """The flash checkpoint directory ``checkpoint`` names (the directory or its
    ``flash_index.json``), else None."""
    if checkpoint is None:
        return None
    path = os.fspath(checkpoint)
    if os.path.isdir(path) and holds_flash(path):
        return path
    directory, name = os.path.split(path)
    if name == INDEX_FILENAME and holds_flash(directory or "."):
        return directory or "."
    return None


def _checkpoint_of_data_file(path) -> str | None:
    """The flash checkpoint directory whose data file ``path`` is, else None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    if not name.endswith(".flash") or not holds_flash(directory):
        return None
    if name not in {f.name for f in flash.read_index(directory).files}:
        return None
    return directory


def placement(device_map) -> dict | str:
    """accelerate's ``device_map`` as ``flash.load_dict`` takes it: ``"disk"`` becomes the
    CPU (accelerate reads those to the CPU and offloads them) and tensors no key covers go
    to the CPU. Example: ``placement({"model": 0, "lm_head": "disk"})``
    gives ``{"model": 0, "lm_head": "cpu", "": "cpu"}``."""
    if not device_map:
        return "cpu"
    out = {key: "cpu" if device == "disk" else device for key, device in device_map.items()}
    out.setdefault("", "cpu")
    return out


def load_checkpoint_in_model(original, *args, **kwargs):
    """Wraps ``load_checkpoint_in_model``: a flash checkpoint directory goes in as its
    first data file, which the ``load_state_dict`` hook reads as the whole checkpoint."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    directory = flash_checkpoint_dir(bound.arguments.get("checkpoint"))
    if directory is None:
        return original(*args, **kwargs)
    paths = open_checkpoint(directory).sources  # FlashFormatError if broken
    if not paths:  # an empty checkpoint: accelerate says what it expects
        return original(*args, **kwargs)
    bound.arguments["checkpoint"] = paths[0]
    return original(*bound.args, **bound.kwargs)


def load_state_dict(original, *args, **kwargs):
    """Wraps accelerate's ``load_state_dict(checkpoint_file, device_map=None)``: a flash
    data file stands for its whole checkpoint, read by ``flash.load_dict``."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    directory = _checkpoint_of_data_file(bound.arguments["checkpoint_file"])
    if directory is None:
        return original(*args, **kwargs)
    return flash.load_dict(directory, placement(bound.arguments["device_map"]),
                           verify=loading.settings["verify"])


def hooks() -> list:
    """(owner, attribute, hook) for each accelerate function to wrap; [] without accelerate.
    Raises ``UnsupportedTransformersError`` if accelerate lacks what the hooks read.

    ``load_checkpoint_in_model`` is wrapped wherever accelerate's own modules re-export it
    (``accelerate``, ``accelerate.utils``, ``accelerate.big_modeling``, ...), so that every
    entry point, ``load_checkpoint_and_dispatch`` included, reaches the hook. A reference
    taken before ``patch()`` (``from accelerate import load_checkpoint_in_model``) keeps
    the original.
    """
    try:
        from accelerate.utils import modeling
    except ImportError:
        return []
    check_accelerate(modeling)
    original = modeling.load_checkpoint_in_model
    out = [(modeling, "load_state_dict", load_state_dict)]
    for name, module in sorted(list(sys.modules.items()), key=lambda item: item[0]):
        if (name == "accelerate" or name.startswith("accelerate.")) and \
                getattr(module, "__dict__", {}).get("load_checkpoint_in_model") is original:
            out.append((module, "load_checkpoint_in_model", load_checkpoint_in_model))
    return out
