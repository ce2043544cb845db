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

**Remote weights**: with ``model_loader_extra_config={"weights": URL}`` (``s3://`` or
``http(s)://``), the full or safetensors layout at that URL is streamed by
``flash.load_dict(URL, ...)`` and the model directory needs only the config and tokenizer
(``flashtensors fetch URL`` fetches them). vLLM's own ``--model s3://...`` cannot be used:
it pulls the config through its runai extra and then accepts only the runai load formats.

Example::

    vllm serve /models/qwen --load-format flash            # plain safetensors directory
    vllm serve /models/qwen-flash --load-format flash      # flashtensors convert output
    LLM(model="/models/qwen-flash", load_format="flash",
        model_loader_extra_config={"threads": 8})
    LLM(model=fetch_model_files("s3://bucket/qwen"), load_format="flash",   # config, tokenizer
        model_loader_extra_config={"weights": "s3://bucket/qwen"})         # weights streamed
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from flashtensors import flash
from flashtensors.checkpoint import checkpoint_files, holds_flash, open_checkpoint
from flashtensors.errors import FlashDeviceError, FlashFormatError
from flashtensors.locations import is_remote

from . import per_rank
from .config import FlashConfigError, FlashLoaderConfig

# Under vLLM's logger, so that the messages appear in vLLM's log with its format.
log = logging.getLogger("vllm.flashtensors")


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
            if _remote_layout(root, self.options.timeout) != "full" and self.options.verify:
                raise _verify_needs_flash(root)
        elif self.options.verify and not holds_flash(root) and not per_rank.saved_tp_sizes(root):
            raise _verify_needs_flash(root)

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        """Loads the weights in ``model_config``'s directory, or at the URL of ``weights``,
        into ``model`` (see the module docstring)."""
        root = self._weights(model_config)
        device = _model_device(model)
        started = time.perf_counter()
        _, tp_size = per_rank.tp_rank_and_size()
        layout = _remote_layout(root, self.options.timeout) if is_remote(root) else _layout(root, tp_size)
        if layout == "per-rank":
            per_rank.load_rank(model, root, verify=self.options.verify, threads=self.options.threads)
        else:
            if layout == "safetensors" and self.options.verify:
                raise _verify_needs_flash(root)
            self._load_full(model, model_config, root, device)
        shared = layout != "per-rank" and tp_size > 1 and self.options.distributed
        log.info("flashtensors: loaded %s (%s layout%s) in %.2f s", root, layout,
                 f", read once by the {tp_size} tensor-parallel ranks" if shared else "", time.perf_counter() - started)

    def _load_full(self, model: nn.Module, model_config: ModelConfig, root: Path, device) -> None:
        """Reads the full flash checkpoint (or else the safetensors) and feeds it to ``load_weights``."""
        tensors = self._stage(root, device)
        loaded = model.load_weights(tensors.items())
        del tensors
        if loaded is not None and model_config.quantization is None:
            # vLLM's own check, with its exemptions (online quantization, KV-cache scales).
            from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

            try:
                DefaultModelLoader.track_weights_loading(self, model, set(loaded))
            except ValueError as e:
                raise FlashFormatError(f"{root}: the checkpoint lacks weights the model needs: {e}") from None

    def _weights(self, model_config: ModelConfig) -> Path | str:
        """Where the weights are read from: the URL of ``weights``, else the local directory."""
        return self.options.weights or _weights_dir(model_config)

    def _stage(self, root: Path | str, device: torch.device) -> dict:
        """The full checkpoint's (or the safetensors') tensors on ``device``, or in host memory if
        they do not fit there. ``flash.load_dict`` itself prefers a flash checkpoint."""
        cpu = torch.device("cpu")
        where = cpu if self.options.staging == "cpu" else device
        remote = {"timeout": self.options.timeout, "cache_dir": self.options.cache_dir} if is_remote(root) else {}
        try:
            return flash.load_dict(root, where, verify=self.options.verify, threads=self.options.threads,
                                   group=self._group(where), **remote)
        except FlashDeviceError as e:  # the whole checkpoint does not fit beside the model (on some rank)
            if where == cpu:
                raise
            log.warning("flashtensors: %s; staging the checkpoint in host memory instead", e)
            return flash.load_dict(root, cpu, threads=self.options.threads, group=self._group(cpu),  # verified
                                   **remote)

    def _group(self, where: torch.device):
        """The tensor-parallel group that reads the checkpoint once and shares it, or None:
        its NCCL group for GPU staging, its gloo group for host staging."""
        _, tp_size = per_rank.tp_rank_and_size()
        if tp_size == 1 or not self.options.distributed:
            return None
        from vllm.distributed import get_tp_group

        tp = get_tp_group()
        return tp.device_group if where.type == "cuda" else tp.cpu_group


def _weights_dir(model_config: ModelConfig) -> Path:
    """The local directory the weights are read from (``model_weights`` overrides ``model``)."""
    root = Path(model_config.model_weights or model_config.model)
    if not root.is_dir():
        raise FlashFormatError(
            f"--load-format flash reads a local model directory, and {str(root)!r} is not one "
            f"(download it first, e.g. with `hf download`)"
        )
    if not holds_flash(root) and not per_rank.saved_tp_sizes(root) and checkpoint_files(root) is None:
        raise FlashFormatError(
            f"{root}: holds no weights flashtensors reads (no flash_index.json, no "
            f"{per_rank.RANK_DIR.format(rank='R', size='N')}/, no *.safetensors); convert "
            f".bin or .pt weights with `flashtensors convert`, or save them with flash.save_dict"
        )
    return root


def _verify_needs_flash(root: Path) -> FlashConfigError:
    return FlashConfigError(
        f"{root}: model_loader_extra_config 'verify' checks the CRC-32C checksums of a flash "
        f"checkpoint, and this directory holds safetensors weights, which have none; drop "
        f"'verify', or convert it with `flashtensors convert`"
    )


def _remote_layout(url: str, timeout: float | None) -> str:
    """``"full"`` (a flash checkpoint) or ``"safetensors"``: what ``url`` holds, from its
    index or headers. Raises FlashRemoteError (missing, forbidden, unreachable) naming the
    URL, or FlashFormatError."""
    return "full" if open_checkpoint(url, timeout=timeout).kind == "flash" else "safetensors"


def _layout(root: Path, tp_size: int) -> str:
    """Which weights of ``root`` this engine reads: ``"per-rank"`` (saved for ``tp_size``),
    ``"full"`` (a flash checkpoint) or ``"safetensors"``. With per-rank checkpoints for
    other sizes only, ``"per-rank"`` too, so that loading names the sizes present."""
    if tp_size in per_rank.saved_tp_sizes(root):
        return "per-rank"
    if holds_flash(root):
        return "full"
    if checkpoint_files(root) is not None:
        return "safetensors"
    return "per-rank"


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters were created (the worker's device, or CPU)."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
