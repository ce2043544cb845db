"""The one place that turns a location (what a user passes as ``path``) into a store.

A location is a local path (a directory, or one ``.safetensors`` file), a URL whose
scheme is registered here (``http``, ``https``, ``s3``, ``hf``), or a Hugging Face repo ID
``org/name`` where no such local path exists (an existing path always wins). A URL of
another scheme is refused by name, never taken for a path. Adding a scheme (``gs://``, a
peer source) is one module with an ``open_<scheme>(location, timeout) -> Store`` function
(taking ``cache_dir`` too if it places its own local tier) and one line in SCHEMES, or a
call to :func:`register_scheme`. Nothing else in flashtensors
asks what kind of location it was given: it asks the store (``store.local``).

With a local tier (``cache_dir``), a remote store is wrapped in a
:class:`flashtensors.stores.tier.TieredStore`, which answers from the local copies.

Example:
    >>> open_store("/models/m").local
    True
    >>> open_store("s3://bucket/models/m", timeout=30).describe("config.json")  # doctest: +SKIP
    's3://bucket/models/m/config.json'
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

# scheme -> "module:function" opening a store for a location of that scheme.
SCHEMES = {
    "http": "flashtensors.stores.http:open_http",
    "https": "flashtensors.stores.http:open_http",
    "s3": "flashtensors.stores.s3:open_s3",
    "hf": "flashtensors.stores.hub:open_hub",
}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
DEFAULT_TIMEOUT_S = 30.0


def register_scheme(scheme: str, opener: str) -> None:
    """Makes ``scheme://`` locations open with ``opener`` ("module:function", the function
    taking ``(location, timeout)`` and returning a store; see flashtensors/stores/api.py).

    Example:
        >>> register_scheme("gs", "my_package.gcs:open_gcs")            # doctest: +SKIP
    """
    SCHEMES[scheme.lower()] = opener


def scheme_of(location) -> str | None:
    """The registered scheme of ``location`` ("hf" for a Hugging Face repo ID ``org/name``
    that names no local path), or None for a local path or a URL of another scheme (which
    :func:`open_store` refuses).

    Example:
        >>> scheme_of("s3://bucket/m"), scheme_of("/models/m"), scheme_of("gs://bucket/m")
        ('s3', None, None)
    """
    if not isinstance(location, str) or location.startswith(("/", ".")):  # a path, at no cost
        return None
    scheme = url_scheme(location)
    if scheme is not None:
        return scheme if scheme in SCHEMES else None
    from .hub import is_repo_id

    return "hf" if is_repo_id(location) and not os.path.lexists(location) else None


def url_scheme(location) -> str | None:
    """The scheme ``location`` is written with, registered or not (None: not a URL).

    Example:
        >>> url_scheme("gs://bucket/m"), url_scheme("/models/m")
        ('gs', None)
    """
    url = _URL.match(location) if isinstance(location, str) else None
    return url[1] if url is not None else None


def is_remote(location) -> bool:
    """Whether ``location`` is read over the network (a URL of a registered scheme).

    Example:
        >>> is_remote("https://h/m"), is_remote("/models/m")
        (True, False)
    """
    return scheme_of(location) is not None


def open_store(location, timeout: float | None = None, cache_dir: str | None = None):
    """The store of ``location`` (local or remote, see the module docstring); ``timeout``:
    seconds remote requests may take (:func:`resolve_timeout`); ``cache_dir``: the local
    tier's directory, for remote locations (ignored for local ones: the options check
    refuses it there, see flashtensors/options.py).

    Raises FlashRemoteError for a malformed URL, FlashError when a scheme's library is
    missing (botocore for s3://).
    """
    scheme = scheme_of(location)
    if scheme is None and url_scheme(location) is not None:
        from ..errors import FlashError

        raise FlashError(f"{location}: no store for scheme {url_scheme(location)!r}, registered: "
                         f"{', '.join(sorted(SCHEMES))} (URL schemes are lowercase; register_scheme adds one)")
    if scheme is None:
        from .local import open_local

        return open_local(location)
    module, _, function = SCHEMES[scheme].partition(":")
    opener = getattr(importlib.import_module(module), function)
    if "cache_dir" in inspect.signature(opener).parameters:  # a store with its own local tier (the Hub's cache)
        return opener(location, resolve_timeout(timeout), cache_dir=cache_dir)
    store = opener(location, resolve_timeout(timeout))
    if cache_dir:
        from .tier import TieredStore

        store = TieredStore(store, cache_dir)
    return store


def resolve_timeout(timeout) -> float:
    """Seconds a remote read may go without receiving a byte (retries included) before
    the load fails: ``timeout``, else ``$FLASHTENSORS_TIMEOUT``, else 30.

    Example:
        >>> resolve_timeout(None), resolve_timeout(5)
        (30.0, 5.0)
    """
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
