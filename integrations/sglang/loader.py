"""The SGLang model loader behind ``--load-format flash``.

A :class:`DefaultModelLoader` whose weights come from flashtensors' engine, so SGLang builds
the model and runs its own ``load_weights`` (stacked qkv and gate_up, tensor-parallel
sharding, quantization) and post-processing as for safetensors. The weights (``--model-path
DIR``) are read from:

* a flash checkpoint: ``DIR/flash_index.json`` + ``*.flash`` (``flash.save_dict(model.state_dict(),
  DIR)``, the transformers adapter, ``flashtensors convert``);
* else the directory's own safetensors files, never converted;
* a model named by Hub repo ID (``--model-path org/name``, no such local path): streamed
  from ``hf://org/name@<revision>`` (``--revision``) into the Hub cache (``--download-dir``
  if given), where huggingface_hub then finds it downloaded;
* or, with ``--model-loader-extra-config '{"weights": URL}'``, the flash checkpoint or the
  safetensors at ``s3://`` or ``http(s)://`` URL, streamed (``DIR`` then needs only the
  config and tokenizer: ``flashtensors fetch URL``).

With tensor parallelism the checkpoint is read once by the tensor-parallel group, each rank
reading its share (``flash.load_dict(..., group=...)``), unless ``"distributed": false``.
SGLang's ``update_weights_from_disk`` (``load_format="flash"``) reads its ``model_path``
(a directory or URL) the same way, afresh each time.

Example::

    python -m sglang.launch_server --model-path /models/qwen-flash --load-format flash --tp-size 2
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from sglang.srt.configs.load_config import LoadConfig
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_loader.loader import BaseModelLoader, DefaultModelLoader

from flashtensors.errors import FlashFormatError
from flashtensors.stores import is_remote

from ..full_checkpoint import hand_over, layout_of, no_weights_error, stage, tp_group_for
from ..hub import hub_location, with_hub_cache
from ..loader_options import FlashConfigError, FlashLoaderConfig

log = logging.getLogger("sglang.flashtensors")


class FlashModelLoader(DefaultModelLoader):
    """Loads a model's weights through flashtensors (``--load-format flash``): from a flash
    checkpoint or, in a directory without one, from its safetensors files.

    Options come from ``--model-loader-extra-config``, checked strictly by
    :class:`~flashtensors.integrations.loader_options.FlashLoaderConfig`.

    Example:
        >>> import sglang as sgl
        >>> engine = sgl.Engine(model_path="/models/qwen-flash", load_format="flash")
    """

    def __init__(self, load_config: LoadConfig):
        # DefaultModelLoader.__init__ would refuse this loader's options as unknown keys.
        BaseModelLoader.__init__(self, load_config)
        self.options = FlashLoaderConfig.from_extra_config(load_config.model_loader_extra_config)

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to download: checks that the weights are there (a URL's index or headers are read)."""
        self._layout(self._root(model_config.model_path, model_config.revision, primary=True))

    def resolve_model_weights(self, model_config: ModelConfig, model: torch.nn.Module):
        """SGLang's startup-overlap path (``--startup-weight-load-mode overlap``): refused."""
        raise FlashConfigError("--startup-weight-load-mode overlap prefetches safetensors files itself; "
                               "it does not combine with --load-format flash")

    def _get_weights_iterator(self, source: DefaultModelLoader.Source, **_startup_prefetch) -> Iterator:
        """``source``'s weights as ``(prefix + name, tensor)``, read before this returns (so that a
        missing or broken checkpoint fails before any weight is loaded), freed as they are consumed."""
        primary = source.model_config is not None and source.model_or_path == source.model_config.model_path
        root = self._root(source.model_or_path, source.revision, primary)
        layout = self._layout(root)
        started = time.perf_counter()
        tensors = stage(root, layout, _current_device(), self._options_for(root), self._group_for(), log)
        shared = _tp_size() if self.options.distributed else 1
        log.info("flashtensors: read %s (%s layout%s) in %.2f s", root, layout,
                 f", once by the {shared} tensor-parallel ranks" if shared > 1 else "", time.perf_counter() - started)
        if self.counter_before_loading_weights == 0.0:
            self.counter_before_loading_weights = started
        weights = hand_over(tensors)
        if self.load_config.draft_model_idx is not None:
            return self._filter_mtp_weights(weights, source.prefix, self.load_config.draft_model_idx)
        return ((source.prefix + name, tensor) for name, tensor in weights)

    def _root(self, model_path: str, revision: str | None, primary: bool) -> Path | str:
        """The URL of ``weights`` (for the model's own weights, not a model's secondary
        sources), the Hub repository a model path names (at ``revision``), a URL given as
        the model path, or the local directory."""
        if self.options.weights and primary:
            return self.options.weights
        hub = hub_location(model_path, revision)
        if hub is not None:
            return hub
        if is_remote(model_path):
            return model_path
        root = Path(model_path)
        if not root.is_dir():
            raise FlashFormatError(f"--load-format flash reads a local model directory, and {model_path!r} "
                                   f"is not one (download it first, e.g. with `hf download`)")
        return root

    def _options_for(self, root: Path | str) -> FlashLoaderConfig:
        return with_hub_cache(self.options, root, self.load_config.download_dir)

    def _layout(self, root: Path | str) -> str:
        layout = layout_of(root, self.options.timeout)
        if layout == "none":
            raise no_weights_error(root)
        return layout

    def _group_for(self):
        return tp_group_for(_tp_size(), self.options.distributed, _sglang_tp_group)


def _tp_size() -> int:
    from sglang.srt.distributed import model_parallel_is_initialized

    return _sglang_tp_group().world_size if model_parallel_is_initialized() else 1


def _sglang_tp_group():
    from sglang.srt.distributed import get_tp_group

    return get_tp_group()


def _current_device() -> torch.device:
    """Where SGLang's model worker builds the model: its GPU, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
