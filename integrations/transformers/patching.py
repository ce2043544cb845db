"""Install and remove the ``from_pretrained`` hooks (and accelerate's, when installed).

Example::

    from flashtensors.integrations import transformers as flash_tf

    flash_tf.patch()                 # idempotent
    model = AutoModelForCausalLM.from_pretrained("DIR")   # DIR: flash or safetensors weights
    flash_tf.unpatch()               # transformers and accelerate are exactly as before
"""

from __future__ import annotations

import functools
import threading

from . import accelerate_loading, loading
from .compat import check_supported

_lock = threading.Lock()
_originals: list[tuple[object, str, object]] = []  # (owner, attribute, what patch() replaced)


def _hooks(modeling_utils):
    """(owner, attribute, hook) for each function patch() wraps."""
    return [
        (modeling_utils, "_get_resolved_checkpoint_files", loading.resolve_checkpoint_files),
        (modeling_utils, "_get_dtype", loading.get_dtype),
        (modeling_utils.PreTrainedModel, "_load_pretrained_model", loading.load_pretrained_model),
        *accelerate_loading.hooks(),
    ]


def _wrap(owner, attribute, hook):
    """(the attribute as found, its replacement calling ``hook(original, *args, **kwargs)``)."""
    raw = owner.__dict__[attribute]
    is_static = isinstance(raw, staticmethod)
    original = raw.__func__ if is_static else raw

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return hook(original, *args, **kwargs)

    return raw, staticmethod(wrapper) if is_static else wrapper


def patch(*, verify: bool = False, safetensors: bool = True) -> None:
    """Make every ``from_pretrained`` in transformers read weights through flashtensors.

    A local model directory holding a flash checkpoint (``flash_index.json``) loads its
    weights from it. With ``safetensors=True`` (the default), the safetensors files
    transformers resolves for any other model (a plain Hugging Face directory, sharded or
    not, or a downloaded Hub model) are read by flashtensors too, not by transformers;
    ``safetensors=False`` leaves them, like every other format, to transformers.
    accelerate's ``load_checkpoint_in_model`` and ``load_checkpoint_and_dispatch`` read
    flash checkpoint directories too.

    Calling ``patch()`` again only updates the options. With ``verify=True`` every flash
    load recomputes the checksums and raises ``FlashChecksumError`` on a mismatch; loading
    safetensors (which have no checksums) then raises ``FlashFormatError``.

    Raises ``UnsupportedTransformersError`` if the installed transformers is not supported.

    Example::

        import flashtensors
        flashtensors.patch_transformers()   # the same thing
        flash_tf.patch(safetensors=False)   # flash directories only
    """
    modeling_utils = check_supported()
    with _lock:
        loading.settings.update(verify=verify, safetensors=safetensors)
        if _originals:
            return
        for owner, attribute, hook in _hooks(modeling_utils):
            raw, wrapped = _wrap(owner, attribute, hook)
            _originals.append((owner, attribute, raw))
            setattr(owner, attribute, wrapped)


def unpatch() -> None:
    """Undo ``patch()``: put back transformers' (and accelerate's) own functions. Does
    nothing if not patched.

    Example: ``flash_tf.unpatch(); flash_tf.is_patched()  # False``.
    """
    with _lock:
        while _originals:
            owner, attribute, raw = _originals.pop()
            setattr(owner, attribute, raw)
        loading.settings.update(verify=False, safetensors=True)


def is_patched() -> bool:
    """Whether ``patch()`` is in effect. Example: ``assert flash_tf.is_patched()``."""
    return bool(_originals)
