"""The options of ``--load-format flash``, read strictly from ``--model-loader-extra-config``,
which vLLM and SGLang both have (the same JSON object for either).

Example::

    vllm serve /models/qwen-flash --load-format flash \\
        --model-loader-extra-config '{"threads": 16, "verify": true}'
    vllm serve "$(flashtensors fetch s3://bucket/qwen)" --load-format flash \\
        --model-loader-extra-config '{"weights": "s3://bucket/qwen"}'
    python -m sglang.launch_server --model-path /models/qwen --load-format flash \\
        --model-loader-extra-config '{"threads": 16}'

Unknown keys and values of the wrong type are errors, so a misspelt option never goes
unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from flashtensors.errors import FlashError
from flashtensors.options import MAX_CONNECTIONS
from flashtensors.stores import SCHEMES, is_remote

STAGING_CHOICES = ("device", "cpu")
MAX_TIMEOUT_S = 86400


class FlashConfigError(FlashError, ValueError):
    """``model_loader_extra_config`` holds an unknown key or a bad value for ``--load-format flash``,
    or asks for something the weights cannot give (``verify`` on safetensors)."""


def verify_needs_flash(root) -> FlashConfigError:
    """The error for ``verify`` on weights that are safetensors, which carry no checksums."""
    return FlashConfigError(
        f"{root}: model_loader_extra_config 'verify' checks the CRC-32C checksums of a flash "
        f"checkpoint, and this directory holds safetensors weights, which have none; drop "
        f"'verify', or convert it with `flashtensors convert`"
    )


@dataclass(frozen=True)
class FlashLoaderConfig:
    """Options of the flash model loaders (vLLM's and SGLang's).

    Attributes:
        threads: I/O threads per load (default: flashtensors picks 4 to 16 by CPU count).
        verify: check every tensor's CRC-32C over the bytes loaded (once per byte for a group).
        staging: where a full checkpoint is loaded before the model's ``load_weights``
            shards it: ``"device"`` (the worker's GPU, fastest; host memory when the whole
            checkpoint does not fit there beside the model) or ``"cpu"`` (host memory
            always). vLLM's per-rank checkpoints always load onto the worker's device.
        distributed: with tensor parallelism, full checkpoints (flash or safetensors) are
            read once by the tensor-parallel group, each rank reading its share and the
            group sharing it (``flash.load_dict(..., group=...)``); ``False``: every rank
            reads the whole checkpoint itself.
        weights: the URL the weights are streamed from (``s3://bucket/prefix``,
            ``http(s)://...``) instead of the model directory, which then needs only the
            config and tokenizer (``flashtensors fetch URL`` fetches them). The URL holds a
            flash checkpoint or safetensors, as ``flash.load_dict`` reads them.
        cache_dir: with ``weights``: keep a local copy of the files streamed there and read
            unchanged ones from it next time (``flash.load_dict(cache_dir=...)``; default
            ``$FLASHTENSORS_CACHE_DIR``); a load shared by a tensor-parallel group keeps them too
            (written once per machine).
        timeout: with ``weights``: seconds a read may go without receiving a byte before the
            load fails (default ``$FLASHTENSORS_TIMEOUT``, else 30).
        connections: with ``weights``: requests kept in flight, one connection each, 1 to
            1024 (``flash.load_dict(connections=...)``; default ``$FLASHTENSORS_CONNECTIONS``,
            else 32).

    Example:
        >>> FlashLoaderConfig.from_extra_config({"threads": 8}).threads
        8
        >>> FlashLoaderConfig.from_extra_config({"weights": "s3://bucket/qwen"}).weights
        's3://bucket/qwen'
    """

    threads: int | None = None
    verify: bool = False
    staging: str = "device"
    distributed: bool = True
    weights: str | None = None
    cache_dir: str | None = None
    timeout: float | None = None
    connections: int | None = None

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None) -> FlashLoaderConfig:
        """Reads the engine's ``model_loader_extra_config`` (a dict; ``None`` or ``{}`` gives the defaults).

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
        weights = extra.get("weights")
        if weights is not None and not is_remote(weights):
            raise FlashConfigError(
                f"model_loader_extra_config 'weights' must be the URL of the weights "
                f"({', '.join(s + '://...' for s in SCHEMES)}), got {weights!r}{_url_hint(weights)}")
        cache_dir = extra.get("cache_dir")
        if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
            raise FlashConfigError(f"model_loader_extra_config 'cache_dir' must be a directory path, got {cache_dir!r}")
        timeout = extra.get("timeout")
        if timeout is not None and (type(timeout) not in (int, float) or not 0 < timeout <= MAX_TIMEOUT_S):
            raise FlashConfigError(f"model_loader_extra_config 'timeout' must be a number of seconds, more than 0 "
                                   f"and at most {MAX_TIMEOUT_S}, got {timeout!r}")
        connections = extra.get("connections")
        if connections is not None and (type(connections) is not int or not 1 <= connections <= MAX_CONNECTIONS):
            raise FlashConfigError(f"model_loader_extra_config 'connections' must be an integer from 1 to "
                                   f"{MAX_CONNECTIONS}, got {connections!r}")
        for key, value in (("cache_dir", cache_dir), ("timeout", timeout), ("connections", connections)):
            if value is not None and weights is None:
                raise FlashConfigError(f"model_loader_extra_config {key!r} applies to weights streamed from a URL: "
                                       f"give the URL as 'weights' too")
        return cls(threads=threads, verify=verify, staging=staging, distributed=distributed, weights=weights,
                   cache_dir=cache_dir, timeout=None if timeout is None else float(timeout), connections=connections)


def _url_hint(value) -> str:
    """Why a 'weights' value that is not a URL flashtensors streams from is refused."""
    if not isinstance(value, str):
        return ""
    if value.lower().startswith(("gs://", "az://")):
        return ("; Google Cloud Storage answers the S3 API (s3://bucket/prefix with AWS_ENDPOINT_URL="
                "https://storage.googleapis.com and HMAC keys); Azure Blob Storage is not supported")
    if value.lower().startswith(tuple(s + "://" for s in SCHEMES)):
        return "; URL schemes are lowercase (s3://, http://, https://)"
    return "; a local directory is served as the model directory, with no 'weights'"
