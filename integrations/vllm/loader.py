"""The vLLM model loader behind ``--load-format flash``.

The model directory (``--model DIR``) is an ordinary Hugging Face model directory. Its
weights are read by flashtensors' engine from one of three layouts:

* **full**: ``DIR/flash_index.json`` + ``*.flash``, a Hugging Face state dict (as written
  by ``flash.save_dict(model.state_dict(), DIR)``, the transformers adapter or
  ``flashtensors convert``);
* **safetensors**: the directory's own safetensors weights, never converted (the shards
  ``model.safetensors.index.json`` names, else ``model.safetensors``, else every
  ``*.safetensors``). Like a full checkpoint, they are loaded onto the worker and fed
  through the model's ``load_weights``, so vLLM's own weight loaders fuse and shard
  them: any tensor-parallel size works;
* **per-rank**: ``DIR/flash-rank-{rank}-of-{size}/``, written by
  :func:`~flashtensors.integrations.vllm.save_vllm_checkpoint`; each rank copies its
  tensors straight into its parameters (see :mod:`.per_rank`).

Per-rank checkpoints saved for the engine's tensor-parallel size win; otherwise the full
flash checkpoint, otherwise the safetensors are read.

**Models by Hub repo ID** (``LLM(model="org/name", load_format="flash")``, no such local
path): vLLM fetches the config and tokenizer itself; the weights are streamed from
``hf://org/name@<revision>`` (the model's ``revision``) into the Hub cache (``download_dir``
if given), where vLLM and huggingface_hub then find them downloaded. With
``HF_HUB_OFFLINE=1`` vLLM names the cached snapshot's directory instead, read as a local one.

**Remote weights**: with ``model_loader_extra_config={"weights": URL}`` (``s3://`` or
``http(s)://``), the full or safetensors layout at that URL is streamed by
``flash.load_dict(URL, ...)`` and the model directory needs only the config and tokenizer
(``flashtensors fetch URL`` fetches them). vLLM's own ``--model s3://...`` cannot be used:
it pulls the config through its runai extra and then accepts only the runai load formats.

**In-place reload**: vLLM's ``reload_weights`` gets the weights from :meth:`FlashModelLoader.get_all_weights`:
the full or safetensors layout, read afresh (nothing cached), from ``weights_path`` or from
where the engine's weights were last read.

Example::

    vllm serve /models/qwen --load-format flash            # plain safetensors directory
    vllm serve /models/qwen-flash --load-format flash      # flashtensors convert output
    vllm serve Qwen/Qwen3-8B --load-format flash            # streamed from the Hub
    LLM(model="/models/qwen-flash", load_format="flash",
        model_loader_extra_config={"threads": 8})
    LLM(model=fetch_model_files("s3://bucket/qwen"), load_format="flash",   # config, tokenizer
        model_loader_extra_config={"weights": "s3://bucket/qwen"})         # weights streamed
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from flashtensors.checkpoint import holds_flash
from flashtensors.errors import FlashFormatError
from flashtensors.stores import is_remote

from ..full_checkpoint import (
    hand_over,
    layout_of,
    model_device,
    no_weights_error,
    stage,
    tp_group_for,
)
from ..hub import hub_location, with_hub_cache
from ..loader_options import FlashLoaderConfig, verify_needs_flash
from . import per_rank

# Under vLLM's logger, so that the messages appear in vLLM's log with its format.
log = logging.getLogger("vllm.flashtensors")
# Attributes kept on the model between loads: the model_config.model the engine started with
# (a reload with another weights_path changes it), and what the latest (re)load read.
_STARTED_FROM = "_flashtensors_started_from"
LAST_LOAD = "_flashtensors_last_load"


class FlashModelLoader(BaseModelLoader):
    """Loads a model's weights through flashtensors (``load_format="flash"``): from flash
    checkpoints or, in a directory without one, from its safetensors files.

    Options come from ``model_loader_extra_config``, checked strictly by
    :class:`~.config.FlashLoaderConfig`.

    Example:
        >>> from vllm import LLM
        >>> llm = LLM(model="/models/qwen-flash", load_format="flash")
    """

    def __init__(self, load_config: LoadConfig):
        super().__init__(load_config)
        self.options = FlashLoaderConfig.from_extra_config(load_config.model_loader_extra_config)

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to download: the weights (a local directory, or the URL of ``weights``,
        whose index or headers are read) are checked here."""
        root = self._weights(model_config)
        if is_remote(root):
            if layout_of(root, self.options.timeout) != "full" and self.options.verify:
                raise verify_needs_flash(root)
        elif self.options.verify and not holds_flash(root) and not per_rank.saved_tp_sizes(root):
            raise verify_needs_flash(root)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        """Loads the weights in ``model_config``'s directory, or at the URL of ``weights``,
        into ``model`` (see the module docstring)."""
        root = self._weights(model_config)
        setattr(model, _STARTED_FROM, str(model_config.model))
        started = time.perf_counter()
        _, tp_size = per_rank.tp_rank_and_size()
        layout = layout_of(root, self.options.timeout) if is_remote(root) else _layout(root, tp_size)
        if layout == "per-rank":
            per_rank.load_rank(model, root, verify=self.options.verify, threads=self.options.threads)
        else:
            loaded = model.load_weights(self._checkpoint_weights(model, root, layout))
            if loaded is not None and model_config.quantization is None:
                # vLLM's own check, with its exemptions (online quantization, KV-cache scales).
                from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

                try:
                    DefaultModelLoader.track_weights_loading(self, model, set(loaded))
                except ValueError as e:
                    raise FlashFormatError(f"{root}: the checkpoint lacks weights the model needs: {e}") from None
        _record_load(model, root, layout, "loaded", started, self._shared(layout, tp_size))

    def get_all_weights(self, model_config: ModelConfig, model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors as ``(name, tensor)`` pairs in the checkpoint's own names, for
        vLLM's in-place reload (``reload_weights``), which feeds them to the model's ``load_weights``.

        The weights are read afresh from where the engine loaded them (the directory, or the URL
        of ``weights``), or from ``reload_weights(weights_path=...)``'s directory or URL, which
        vLLM puts in ``model_config.model``. Nothing is cached between reloads: a checkpoint
        rewritten in place (``flash.save_dict(..., overwrite=True)``) is read as it is now. They
        are read (by the tensor-parallel group once, as for the first load) before this returns,
        so a missing or broken checkpoint fails before vLLM touches the model's weights.

        Raises:
            FlashFormatError: the weights are per-rank checkpoints only (already sharded into
                vLLM's parameters, which ``load_weights`` cannot take), or unreadable.

        Example:
            >>> llm.collective_rpc("reload_weights", kwargs={"weights_path": "/ckpt/step-200"})
            >>> llm.collective_rpc("reload_weights")   # the same place again, read afresh
        """
        root = self._reload_source(model_config, model)
        started = time.perf_counter()
        _, tp_size = per_rank.tp_rank_and_size()
        layout = layout_of(root, self.options.timeout) if is_remote(root) else _layout(root, tp_size, reload=True)
        if layout == "per-rank":
            raise FlashFormatError(
                f"{root}: holds per-rank flash checkpoints only, which are already sharded into vLLM's "
                f"parameters and cannot be reloaded in place; reload a full flash checkpoint or a "
                f"safetensors directory (reload_weights(weights_path=DIR)), which load at any "
                f"tensor-parallel size")
        weights = self._checkpoint_weights(model, root, layout)
        _record_load(model, root, layout, "read for reloading", started, self._shared(layout, tp_size))
        return weights

    def _checkpoint_weights(self, model: nn.Module, root: Path | str, layout: str) -> Iterator:
        """Reads the full flash checkpoint (or else the safetensors) onto the model's device and
        returns them as ``(name, tensor)`` pairs for ``load_weights``."""
        _, tp_size = per_rank.tp_rank_and_size()
        group_for = tp_group_for(tp_size, self.options.distributed, _vllm_tp_group)
        return hand_over(stage(root, layout, model_device(model), self._options_for(root), group_for, log))

    def _options_for(self, root: Path | str) -> FlashLoaderConfig:
        return with_hub_cache(self.options, root, self.load_config.download_dir)


    def _weights(self, model_config: ModelConfig) -> Path | str:
        """Where the weights are read from: the URL of ``weights``, else the Hub repository
        the model is named by (at the model's revision), else the local directory."""
        model = model_config.model_weights or model_config.model
        return self.options.weights or hub_location(model, model_config.revision) or _weights_dir(model_config)

    def _reload_source(self, model_config: ModelConfig, model: nn.Module) -> Path | str:
        """Where a reload reads: a URL vLLM put in ``model_config.model`` (``weights_path=URL``);
        the ``weights`` URL while ``model_config.model`` is still the directory the engine
        started with; else that directory (a ``weights_path``, or the starting one)."""
        if is_remote(model_config.model):
            return hub_location(model_config.model, model_config.revision) or model_config.model
        if self.options.weights and getattr(model, _STARTED_FROM, None) in (None, str(model_config.model)):
            return self.options.weights
        return _weights_dir(model_config)

    def _shared(self, layout: str, tp_size: int) -> int:
        """How many tensor-parallel ranks read the checkpoint once together (1: each its own)."""
        return tp_size if layout != "per-rank" and tp_size > 1 and self.options.distributed else 1


def _weights_dir(model_config: ModelConfig) -> Path:
    """The local directory the weights are read from (``model_weights`` overrides ``model``)."""
    root = Path(model_config.model_weights or model_config.model)
    if not root.is_dir():
        raise FlashFormatError(
            f"--load-format flash reads a local model directory, and {str(root)!r} is not one "
            f"(download it first, e.g. with `hf download`)"
        )
    if layout_of(root) == "none" and not per_rank.saved_tp_sizes(root):
        raise no_weights_error(root, also=f"no {per_rank.RANK_DIR.format(rank='R', size='N')}/, ")
    return root


def _layout(root: Path, tp_size: int, *, reload: bool = False) -> str:
    """Which weights of ``root`` this engine reads: ``"per-rank"`` (saved for ``tp_size``),
    ``"full"`` (a flash checkpoint) or ``"safetensors"``. With per-rank checkpoints for
    other sizes only, ``"per-rank"`` too, so that loading names the sizes present. A reload
    (``reload=True``) prefers the full layouts, which ``load_weights`` takes."""
    if not reload and tp_size in per_rank.saved_tp_sizes(root):
        return "per-rank"
    layout = layout_of(root)
    return "per-rank" if layout == "none" else layout


def _record_load(model: nn.Module, root, layout: str, what: str, started: float, shared: int) -> None:
    """Logs a (re)load and keeps its facts on the model, for FlashWorkerExtension.flash_last_load."""
    seconds = time.perf_counter() - started
    setattr(model, LAST_LOAD, {"source": str(root), "layout": layout, "read_seconds": seconds,
                               "ranks_sharing_the_read": shared})
    log.info("flashtensors: %s %s (%s layout%s) in %.2f s", what, root, layout,
             f", read once by the {shared} tensor-parallel ranks" if shared > 1 else "", seconds)


def _vllm_tp_group():
    from vllm.distributed import get_tp_group

    return get_tp_group()
