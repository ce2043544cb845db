"""Lazy access to the compiled core, flashtensors._C (kept out of ``import flashtensors``)."""

from functools import lru_cache

from .errors import FlashError


@lru_cache(maxsize=None)
def module():
    """The flashtensors._C extension module."""
    try:
        from . import _C
    except ImportError as e:
        raise FlashError(
            "the flashtensors native core (flashtensors._C) is not built; install the package with "
            f"`pip install .` rather than importing it from a source tree ({e})") from None
    return _C
