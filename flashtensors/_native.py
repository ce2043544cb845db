"""Lazy access to the compiled core, flashtensors._C (kept out of ``import flashtensors``)."""

import importlib.util
import os
from functools import lru_cache

from .errors import FlashError


@lru_cache(maxsize=None)
def module():
    """The flashtensors._C extension module.

    ``FLASHTENSORS_NATIVE=/path/to/_C.so`` loads another build of it instead, such as the
    AddressSanitizer build the sanitizer tests make.
    """
    override = os.environ.get("FLASHTENSORS_NATIVE")
    if override:
        return _load_from(override)
    try:
        from . import _C
    except ImportError as e:
        raise FlashError(
            "the flashtensors native core (flashtensors._C) is not built; install the package with "
            f"`pip install .` rather than importing it from a source tree ({e})") from None
    return _C


def _load_from(path: str):
    spec = importlib.util.spec_from_file_location("flashtensors._C", path)
    if spec is None or not os.path.isfile(path):
        raise FlashError(f"FLASHTENSORS_NATIVE={path}: no such extension module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
