"""Which transformers versions the integration supports, and a check that fails clearly.

The integration hooks three internals of ``transformers.modeling_utils`` (see
``patching.py``); their names and parameters change between minor releases, so it
runs only on versions it was built and tested against, and checks the hooks exist.
When accelerate is installed, two of its functions are hooked too, and checked the same
way (``check_accelerate``).

Example::

    from flashtensors.integrations.transformers.compat import check_supported
    check_supported()   # raises UnsupportedTransformersError on other versions
"""

from __future__ import annotations

import inspect

from flashtensors.errors import FlashError

SUPPORTED = ">=5.16.1,<5.20"

# internal function -> the parameters the hooks read from it
_HOOKED = {
    "_get_resolved_checkpoint_files": (
        "pretrained_model_name_or_path",
        "variant",
        "gguf_file",
        "use_safetensors",
        "transformers_explicit_filename",
        "download_kwargs",
    ),
    "_get_dtype": ("dtype", "checkpoint_files", "config", "state_dict"),
    "PreTrainedModel._load_pretrained_model": ("model", "state_dict", "checkpoint_files", "load_config"),
    "safe_save_file": (),
}


# accelerate.utils.modeling function -> the parameters the hooks read from it
_HOOKED_ACCELERATE = {
    "load_checkpoint_in_model": ("checkpoint", "device_map"),
    "load_state_dict": ("checkpoint_file", "device_map"),
}


class UnsupportedTransformersError(FlashError):
    """The installed transformers is missing or is a version this integration does not support."""


def _lookup(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def check_supported():
    """Return ``transformers.modeling_utils`` if the installed transformers is supported.

    Raises ``UnsupportedTransformersError`` naming the installed and supported versions.
    """
    try:
        import transformers
        from packaging.specifiers import SpecifierSet
        from transformers import modeling_utils
    except ImportError as exc:
        raise UnsupportedTransformersError(
            f"flashtensors' transformers integration needs transformers{SUPPORTED}: {exc}"
        ) from exc

    installed = transformers.__version__
    if not SpecifierSet(SUPPORTED).contains(installed, prereleases=True):
        raise UnsupportedTransformersError(
            f"transformers {installed} is not supported by flashtensors' transformers integration; "
            f"install transformers{SUPPORTED}"
        )
    for name, params in _HOOKED.items():
        func = _lookup(modeling_utils, name)
        if func is None:
            missing = [name]
        else:
            missing = [f"{name}({p})" for p in params if p not in inspect.signature(func).parameters]
        if missing:
            raise UnsupportedTransformersError(
                f"transformers {installed} lacks transformers.modeling_utils.{', '.join(missing)}; "
                f"install transformers{SUPPORTED}"
            )
    return modeling_utils


def check_accelerate(modeling) -> None:
    """Checks that ``accelerate.utils.modeling`` has the functions and parameters the
    accelerate hooks read; raises ``UnsupportedTransformersError`` naming what is missing."""
    import accelerate

    for name, params in _HOOKED_ACCELERATE.items():
        func = getattr(modeling, name, None)
        missing = [name] if func is None else [
            f"{name}({p})" for p in params if p not in inspect.signature(func).parameters]
        if missing:
            raise UnsupportedTransformersError(
                f"accelerate {accelerate.__version__} lacks accelerate.utils.modeling.{', '.join(missing)}, "
                f"which flashtensors' accelerate hooks need; install an accelerate that has them (1.x)"
            )
