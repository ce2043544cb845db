"""Remote checkpoints: ``http://``, ``https://`` and ``s3://`` URLs of a checkpoint
directory (or of one ``.safetensors`` file), loaded with the same engine as local files.

Python fetches only the small parts (the flash index, safetensors headers, the Hugging
Face weight index) and the objects' sizes and ETags; the tensor bytes are read by the
native core with HTTP range GETs straight into the load's buffers (csrc/http_source.cpp).
S3 objects are read through presigned GET URLs made by botocore. See docs/remote.md.

Example:
    >>> from flashtensors import flash
    >>> sd = flash.load_dict("http://10.0.0.5:8080/models/m", "cpu")        # doctest: +SKIP
    >>> sd = flash.load_dict("s3://bucket/models/m", {"": 0})               # doctest: +SKIP
"""

from __future__ import annotations

import os

SCHEMES = ("http://", "https://", "s3://")
DEFAULT_TIMEOUT_S = 30.0


def is_url(path) -> bool:
    """Whether ``path`` is a remote checkpoint location (an http(s):// or s3:// URL).

    Example:
        >>> is_url("s3://bucket/m"), is_url("/models/m")
        (True, False)
    """
    return isinstance(path, str) and path.startswith(SCHEMES)


def resolve_timeout(timeout) -> float:
    """Seconds a remote read may go without receiving a byte (retries included) before
    the load fails: ``timeout``, else ``$FLASHTENSORS_TIMEOUT``, else 30."""
    from ..errors import FlashError

    if timeout is None:
        timeout = os.environ.get("FLASHTENSORS_TIMEOUT", DEFAULT_TIMEOUT_S)
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise FlashError(f"timeout must be a number of seconds, not {timeout!r}") from None
    if not 0 < value <= 86400:
        raise FlashError(f"timeout must be more than 0 and at most 86400 seconds, not {timeout!r}")
    return value
