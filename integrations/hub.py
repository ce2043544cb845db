"""Models named by Hub repo ID in the adapters: ``vllm serve org/name``, SGLang's
``--model-path org/name`` and transformers' ``from_pretrained("org/name")`` read the weights
from ``hf://org/name@<revision>`` (flashtensors/stores/hub.py), into the Hub cache the
engine names (its ``download_dir``), where huggingface_hub then finds them downloaded.

Example:
    >>> hub_location("Qwen/Qwen3-8B", None)
    'hf://Qwen/Qwen3-8B@main'
"""

from __future__ import annotations

import dataclasses

from flashtensors.stores import scheme_of

from .loader_options import FlashLoaderConfig


def hub_location(model, revision: str | None) -> str | None:
    """``hf://org/name@revision`` for an engine's model named by its Hub repo ID (``org/name``
    where no such local path exists), else None. With ``HF_HUB_OFFLINE=1`` vLLM has already
    put the cached snapshot's directory in its place.

    Example:
        >>> hub_location("Qwen/Qwen3-8B", None), hub_location("/models/qwen", "main")
        ('hf://Qwen/Qwen3-8B@main', None)
    """
    if not isinstance(model, str) or model.startswith("hf://") or scheme_of(model) != "hf":
        return None
    return f"hf://{model}@{revision or 'main'}"


def with_hub_cache(options: FlashLoaderConfig, root, download_dir: str | None) -> FlashLoaderConfig:
    """``options`` for reading ``root``: a Hub location's cache is the engine's ``download_dir``
    (vLLM's and SGLang's ``--download-dir``), unless the ``cache_dir`` option names one (it
    does with ``"weights": "hf://org/name"``)."""
    if str(root).startswith("hf://") and options.cache_dir is None and download_dir:
        return dataclasses.replace(options, cache_dir=str(download_dir))
    return options
