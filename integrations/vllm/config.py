"""The options of ``--load-format flash``, read strictly from ``--model-loader-extra-config``.

Example::

    vllm serve /models/qwen-flash --load-format flash \\
        --model-loader-extra-config '{"threads": 16, "verify": true}'

Unknown keys and values of the wrong type are errors, so a misspelt option never goes
unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from flashtensors.errors import FlashError

STAGING_CHOICES = ("device", "cpu")


class FlashConfigError(FlashError, ValueError):
    """``model_loader_extra_config`` holds an unknown key or a bad value for ``--load-format flash``."""


@dataclass(frozen=True)
class FlashLoaderConfig:
    """Options of the flash model loader.

    Attributes:
        threads: I/O threads per load (default: flashtensors picks 4 to 16 by CPU count).
        verify: check every tensor's CRC-32C before loading (reads the weights twice).
        staging: where a full checkpoint is loaded before the model's ``load_weights``
            shards it: ``"device"`` (the worker's GPU, fastest; host memory when the whole
            checkpoint does not fit there beside the model) or ``"cpu"`` (host memory
            always). Per-rank checkpoints always load onto the worker's device.
        distributed: with tensor parallelism, full checkpoints (flash or safetensors) are
            read once by the tensor-parallel group, each rank reading its share and the
            group sharing it (``flash.load_dict(..., group=...)``); ``False``: every rank
            reads the whole checkpoint itself.

    Example:
        >>> FlashLoaderConfig.from_extra_config({"threads": 8})
        FlashLoaderConfig(threads=8, verify=False, staging='device', distributed=True)
    """

    threads: int | None = None
    verify: bool = False
    staging: str = "device"
    distributed: bool = True

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None) -> FlashLoaderConfig:
        """Reads vLLM's ``model_loader_extra_config`` (a dict; ``None`` or ``{}`` gives the defaults).

        Raises:
            FlashConfigError: an unknown key, or a value of the wrong type or out of range.
        """
        extra = dict(extra or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise FlashConfigError(
                f"unknown model_loader_extra_config key(s) for --load-format flash: {unknown}; "
                f"the options are {known}"
            )
        threads = extra.get("threads")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise FlashConfigError(f"model_loader_extra_config 'threads' must be an integer >= 1, got {threads!r}")
        verify = extra.get("verify", False)
        if type(verify) is not bool:
            raise FlashConfigError(f"model_loader_extra_config 'verify' must be true or false, got {verify!r}")
        staging = extra.get("staging", "device")
        if staging not in STAGING_CHOICES:
            raise FlashConfigError(
                f"model_loader_extra_config 'staging' must be one of {list(STAGING_CHOICES)}, got {staging!r}"
            )
        distributed = extra.get("distributed", True)
        if type(distributed) is not bool:
            raise FlashConfigError(
                f"model_loader_extra_config 'distributed' must be true or false, got {distributed!r}")
        return cls(threads=threads, verify=verify, staging=staging, distributed=distributed)
