"""vLLM integration: ``--load-format flash`` on an unmodified vLLM.

Installing flashtensors registers :func:`register` under vLLM's ``vllm.general_plugins``
entry point, which vLLM calls in every process it starts (API server, engine core,
workers); nothing needs importing or patching. The model directory holds config.json,
tokenizer files and the weights: flash checkpoints, or the directory's own safetensors
files read as they are (see :mod:`.loader` for the layouts).

Example::

    vllm serve /models/qwen --load-format flash               # safetensors, no conversion
    flashtensors convert /models/qwen /models/qwen-flash      # or flash.save_dict(...)
    vllm serve /models/qwen-flash --load-format flash \\
        --model-loader-extra-config '{"threads": 16}'

    from vllm import LLM
    llm = LLM(model="/models/qwen-flash", load_format="flash")

A model named by Hub repo ID has its weights streamed from the Hub into the Hub cache
(``download_dir`` if given), at the model's ``revision``; with ``HF_HUB_OFFLINE=1`` the
cached snapshot is read::

    vllm serve Qwen/Qwen3-8B --load-format flash --revision main

Weights in object storage or on a web server (vLLM's own ``--model s3://...`` needs its
runai extra and then only takes the runai load formats, so the URL goes in the options,
and the model directory holds the config and tokenizer only)::

    vllm serve "$(flashtensors fetch s3://bucket/qwen)" --load-format flash \\
        --model-loader-extra-config '{"weights": "s3://bucket/qwen"}'

    from flashtensors.integrations.vllm import fetch_model_files
    llm = LLM(model=fetch_model_files("s3://bucket/qwen"), load_format="flash",
              model_loader_extra_config={"weights": "s3://bucket/qwen"})

Reloading a running engine's weights in place (vLLM's ``reload_weights``, as RL loops do)
reads through the same loader, afresh each time::

    llm.collective_rpc("reload_weights", kwargs={"weights_path": "/ckpt/step-200"})
    llm.collective_rpc("reload_flash_weights")   # with FlashWorkerExtension: says what was read

Options (``--model-loader-extra-config``): see :class:`.config.FlashLoaderConfig`.
"""

from __future__ import annotations

LOAD_FORMAT = "flash"

__all__ = [
    "LOAD_FORMAT",
    "FlashConfigError",
    "FlashLoaderConfig",
    "FlashWorkerExtension",
    "fetch_model_files",
    "register",
    "save_vllm_checkpoint",
]

_registered = False


def register() -> None:
    """Registers the loader for ``load_format="flash"`` with vLLM (the plugin entry point).

    Safe to call any number of times in a process. It imports vLLM's model-loader package
    (which vLLM's workers import anyway) and this package's loader, and touches no GPU.

    Example:
        >>> from flashtensors.integrations.vllm import register
        >>> register()   # only needed where vLLM's plugins are disabled (VLLM_PLUGINS)
    """
    global _registered
    if _registered:
        return
    from vllm.model_executor.model_loader import register_model_loader

    from .loader import FlashModelLoader

    register_model_loader(LOAD_FORMAT)(FlashModelLoader)
    _registered = True


def __getattr__(name):
    # Imported on first use so that the entry point's import of this package stays cheap.
    if name == "FlashWorkerExtension":
        from .worker_extension import FlashWorkerExtension

        return FlashWorkerExtension
    if name == "save_vllm_checkpoint":
        from .worker_extension import save_vllm_checkpoint

        return save_vllm_checkpoint
    if name == "fetch_model_files":
        from flashtensors.convert.model_files import fetch_model_files

        return fetch_model_files
    if name in ("FlashConfigError", "FlashLoaderConfig"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
