"""Load flash checkpoints and plain safetensors through flashtensors with transformers'
``from_pretrained`` (and accelerate's ``load_checkpoint_in_model``), and save flash ones.

Example::

    from transformers import AutoModelForCausalLM
    from flashtensors.integrations import transformers as flash_tf

    flash_tf.save_pretrained(model, "out/model", tokenizer=tok)   # config + flash weights + tokenizer
    flash_tf.patch()                                              # or flashtensors.patch_transformers()
    model = AutoModelForCausalLM.from_pretrained("out/model", device_map="auto", dtype="auto")

With the patch on, every model class's ``from_pretrained`` reads the weights of a local
directory holding a flash checkpoint from it, and reads the safetensors files of any
other model with flashtensors' engine instead of transformers' reader (unless
``patch(safetensors=False)``); ``.bin``, GGUF and the rest load exactly as before.
accelerate's ``load_checkpoint_in_model`` and ``load_checkpoint_and_dispatch`` accept flash
checkpoint directories. ``unpatch()`` removes the patch. Supported transformers:
``compat.SUPPORTED``.
"""

from .compat import SUPPORTED, UnsupportedTransformersError, check_supported

# A missing or unsupported transformers is a clear FlashError here, not an ImportError
# from deep inside the hooks (which import transformers).
check_supported()

from .patching import is_patched, patch, unpatch  # noqa: E402
from .saving import save_pretrained  # noqa: E402

__all__ = ["SUPPORTED", "UnsupportedTransformersError", "is_patched", "patch", "save_pretrained", "unpatch"]
