"""Save a transformers model as a Hugging Face directory with flash weights.

``save_pretrained`` runs the model's own ``save_pretrained`` (so the config, the
generation config, tied-weight removal, reverted weight conversions and any custom
code are exactly what transformers writes) and only swaps the safetensors writer
for a flash ``CheckpointWriter``. The result appears at ``path`` in one rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from flashtensors.errors import FlashError
from flashtensors.writer import CheckpointWriter

from .compat import check_supported

_lock = threading.Lock()  # one save at a time swaps transformers' safetensors writer


@contextlib.contextmanager
def _writing_flash(modeling_utils, path: Path):
    """While active, the shards ``save_pretrained`` would write as safetensors go to a
    flash checkpoint at ``path``, committed when the block exits cleanly."""
    with _lock, contextlib.ExitStack() as stack:
        writers = []

        def save_shard(tensors, filename, metadata=None):
            if not writers:
                metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
                writers.append(stack.enter_context(CheckpointWriter(path, metadata=metadata)))
            writers[0].write(tensors)

        original = modeling_utils.safe_save_file
        modeling_utils.safe_save_file = save_shard
        try:
            yield
        finally:
            modeling_utils.safe_save_file = original
        if not writers:
            raise FlashError("model.save_pretrained wrote no weights")


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise FlashError(f"{path} exists and is not empty; pass overwrite=True to replace it")


def save_pretrained(model, path, tokenizer=None, *, overwrite: bool = False, **kwargs) -> Path:
    """Save ``model`` (and ``tokenizer``) into the directory ``path``, weights in flash format.

    ``path`` gets ``config.json`` (+ ``generation_config.json`` for generative models),
    ``flash_index.json`` with its ``*.flash`` data files, and the tokenizer's (or
    processor's) files. Other keyword arguments go to ``model.save_pretrained``. The
    directory is built beside ``path`` and renamed into place; an existing, non-empty
    ``path`` raises ``FlashError`` unless ``overwrite=True``. While it runs, transformers'
    safetensors writer is swapped process-wide, so do not run an ordinary
    ``model.save_pretrained`` in another thread at the same time.

    Example::

        from flashtensors.integrations import transformers as flash_tf

        flash_tf.save_pretrained(model, "out/llama", tokenizer=tok)
        flash_tf.patch()
        model = AutoModelForCausalLM.from_pretrained("out/llama")
    """
    if kwargs.get("push_to_hub"):
        raise ValueError("push_to_hub is not supported: this save_pretrained writes local directories")
    modeling_utils = check_supported()
    path = Path(path)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        built, extras = staging / "model", staging / "extras"
        with _writing_flash(modeling_utils, built):
            model.save_pretrained(extras, **kwargs)
        for entry in extras.iterdir():  # config files, custom code; never safetensors indexes
            if ".safetensors" not in entry.name:
                shutil.move(entry, built / entry.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(built)

        _check_target(path, overwrite)
        if path.exists():
            os.replace(path, staging / "replaced")
        os.replace(built, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
