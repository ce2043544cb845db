"""FlashWorkerExtension: RPCs that flashtensors adds to every vLLM worker, and
:func:`save_vllm_checkpoint`, the driver-side save that calls them.

vLLM mixes the class named by ``worker_extension_cls`` into its workers, and
``llm.collective_rpc(NAME, ...)`` runs a method on all of them and returns one result per
worker. These methods save per-rank checkpoints and reload weights in place, as an RL loop
does after each training step.

Example::

    from vllm import LLM
    from flashtensors.integrations.vllm import FlashWorkerExtension

    llm = LLM("/ckpt/policy", load_format="flash", worker_extension_cls=FlashWorkerExtension.QUALNAME)
    # ... the trainer writes step 200: flash.save_dict(state, "/ckpt/policy", overwrite=True)
    facts = llm.collective_rpc("reload_flash_weights")      # one dict per worker
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from flashtensors.convert.model_files import is_weight_file
from flashtensors.errors import FlashError

from .loader import LAST_LOAD
from .per_rank import save_worker_rank


class FlashWorkerExtension:
    """A vLLM worker extension: ``save_flash_rank``, ``reload_flash_weights`` and
    ``flash_last_load`` on every worker, called through ``llm.collective_rpc``.

    Pass it as ``worker_extension_cls`` when the engine starts. :func:`save_vllm_checkpoint`
    uses ``save_flash_rank``; without the extension, that function sends the save function
    itself to the workers, which vLLM allows only in some setups.

    Example:
        >>> llm = LLM("/models/qwen", load_format="flash",
        ...           worker_extension_cls=FlashWorkerExtension.QUALNAME)
        >>> llm.collective_rpc("reload_flash_weights", kwargs={"weights_path": "/ckpt/step-200"})
        [{'source': '/ckpt/step-200', 'layout': 'full', 'read_seconds': 0.41, 'reload_seconds': 0.52, ...}]
    """

    QUALNAME = "flashtensors.integrations.vllm.FlashWorkerExtension"

    def save_flash_rank(self, path: str, overwrite: bool = False) -> str | None:
        """Writes this worker's rank checkpoint into ``path``; see :func:`save_worker_rank`."""
        return save_worker_rank(self, path, overwrite)

    def reload_flash_weights(self, weights_path: str | None = None) -> dict | None:
        """Reloads the model's weights in place through vLLM's ``reload_weights``, from
        ``weights_path`` (a directory or URL; later reloads without one read it again) or from
        where the engine's weights were last read, and says what was read.

        With ``load_format="flash"`` the weights are read afresh each time (a checkpoint the
        trainer rewrote in place gives its new weights), by the tensor-parallel group once.

        Returns:
            ``flash_last_load()`` plus ``reload_seconds`` (reading, loading and vLLM's
            post-load processing); with another load format, only ``reload_seconds``.

        Example:
            >>> llm.collective_rpc("reload_flash_weights", kwargs={"weights_path": "s3://bucket/step-200"})
        """
        import time

        started = time.perf_counter()
        self.reload_weights(weights_path=weights_path)
        return {**(self.flash_last_load() or {}), "reload_seconds": time.perf_counter() - started}

    def flash_last_load(self) -> dict | None:
        """What flashtensors last read into this worker's model (``None`` if nothing):
        ``source`` (directory or URL), ``layout`` (``full``, ``safetensors``, ``per-rank``),
        ``read_seconds`` and ``ranks_sharing_the_read`` (the tensor-parallel ranks that read
        it once together; 1 when each read its own).

        Example:
            >>> llm.collective_rpc("flash_last_load")[0]["source"]
            '/ckpt/policy'
        """
        last = getattr(self.model_runner.get_model(), LAST_LOAD, None)
        return dict(last) if last is not None else None


def save_vllm_checkpoint(llm, path, *, overwrite: bool = False) -> Path:
    """Saves a running vLLM engine's weights as per-rank flash checkpoints in ``path``.

    Every tensor-parallel worker writes ``path/flash-rank-{rank}-of-{size}/``; then the
    model directory's other files (config.json, tokenizer, generation config) are copied
    beside them, so ``path`` can be served with ``--load-format flash`` at the same
    tensor-parallel size. ``path`` may be the model's own directory: the per-rank
    checkpoints are added next to its weights.

    Each worker rebuilds its rank's parameters in host memory by re-reading the engine's
    weights (see the module docstring), so it needs that much free host memory, and the
    engine's weights must still be where it loaded them from.

    Args:
        llm: a ``vllm.LLM``.
        path: the output model directory (created if missing).
        overwrite: replace per-rank checkpoints already in ``path``.

    Returns:
        ``path`` as a Path.

    Raises:
        FlashError: the engine uses pipeline parallelism, a checkpoint exists and
            ``overwrite`` is false, or vLLM refuses to send the save function to the
            workers (start the engine with ``worker_extension_cls``, see
            :class:`FlashWorkerExtension`).

    Example:
        >>> llm = LLM("/models/qwen", tensor_parallel_size=2,
        ...           worker_extension_cls=FlashWorkerExtension.QUALNAME)
        >>> save_vllm_checkpoint(llm, "/models/qwen-tp2")
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = llm.llm_engine.vllm_config
    if _resolves_to_extension(config.parallel_config.worker_extension_cls):
        llm.collective_rpc("save_flash_rank", args=(str(path), overwrite))
    else:
        try:
            llm.collective_rpc(save_worker_rank, args=(str(path), overwrite))
        except TypeError as e:  # vLLM's message serializer refuses functions
            raise FlashError(
                "vLLM would not send the save function to its workers "
                f"({e}). Start the engine with "
                f"worker_extension_cls={FlashWorkerExtension.QUALNAME!r}, or set "
                "VLLM_ALLOW_INSECURE_SERIALIZATION=1 before starting it."
            ) from e
    source = Path(config.model_config.model)
    if source.is_dir():
        _copy_model_files(source, path)
    return path


def _resolves_to_extension(qualname: str | None) -> bool:
    """Whether vLLM's ``worker_extension_cls`` setting names :class:`FlashWorkerExtension`."""
    module, _, name = (qualname or "").rpartition(".")
    if not module:
        return False
    try:
        return getattr(importlib.import_module(module), name, None) is FlashWorkerExtension
    except ImportError:
        return False


def _copy_model_files(src: Path, dst: Path) -> None:
    """Copies the top-level files of model directory ``src`` other than weights into ``dst``."""
    if src.resolve() == dst.resolve():
        return
    for f in src.iterdir():
        if f.is_file() and not is_weight_file(f):
            shutil.copy2(f, dst / f.name)
