"""The options of ``--load-format flash`` (shared with the SGLang adapter; see
:mod:`flashtensors.integrations.loader_options`).

Example::

    vllm serve /models/qwen-flash --load-format flash \\
        --model-loader-extra-config '{"threads": 16, "verify": true}'
"""

from ..loader_options import FlashConfigError, FlashLoaderConfig

__all__ = ["FlashConfigError", "FlashLoaderConfig"]
