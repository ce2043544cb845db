"""flashtensors: load model weights onto GPUs and CPUs as fast as the hardware allows.

Example:
    >>> from flashtensors import flash
    >>> flash.save_dict(model.state_dict(), "/models/m")
    >>> state_dict = flash.load_dict("/models/m", {"": 0})
"""

from .errors import FlashChecksumError, FlashDeviceError, FlashError, FlashFormatError, FlashRemoteError
from .formats.flash import INDEX_FILENAME
from .stores import register_scheme

__version__ = "0.1.0"
__all__ = ["flash", "FlashError", "FlashFormatError", "FlashChecksumError", "FlashDeviceError", "FlashRemoteError",
           "INDEX_FILENAME", "patch_transformers", "register_scheme"]


def __getattr__(name):
    # `flash` pulls in the loader and writer; import it on first use so that
    # `import flashtensors` stays cheap (the vLLM plugin entry point imports us).
    if name == "flash":
        import importlib

        return importlib.import_module(".flash", __name__)
    raise AttributeError(f"module 'flashtensors' has no attribute {name!r}")


def patch_transformers(*, verify: bool = False, safetensors: bool = True) -> None:
    """Makes ``from_pretrained`` of every transformers model read its weights through
    flashtensors: flash checkpoints, and (``safetensors=True``, the default) the safetensors
    files of any other model, which transformers then does not read itself.
    accelerate's ``load_checkpoint_in_model`` / ``load_checkpoint_and_dispatch`` read flash
    checkpoint directories too. ``verify=True``: check every flash tensor's checksum on
    load. Undo with ``flashtensors.integrations.transformers.unpatch()``.

    Example:
        >>> import flashtensors
        >>> flashtensors.patch_transformers()
        >>> model = AutoModelForCausalLM.from_pretrained("/models/Qwen3-8B")   # safetensors
        >>> model = AutoModelForCausalLM.from_pretrained("/models/m-flash")    # flash
    """
    from .integrations.transformers import patch

    patch(verify=verify, safetensors=safetensors)
