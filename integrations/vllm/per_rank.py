"""Per-rank flash checkpoints: one flash checkpoint per tensor-parallel rank, holding that
rank's shard of every parameter under vLLM's own parameter names.

Layout, inside an ordinary model directory (config.json and tokenizer files beside it)::

    DIR/flash-rank-0-of-2/flash_index.json, *.flash
    DIR/flash-rank-1-of-2/flash_index.json, *.flash

Loading one copies each tensor straight into the matching parameter: no name mapping,
no fusing, no sharding. That is the fast path, and it needs the tensor-parallel size the
checkpoint was saved with.

Each rank's tensors are the parameters as the model's ``load_weights`` leaves them,
before vLLM's post-load processing (kernel repacking, online quantization), because
loading runs that processing again. They are therefore not read off the serving model
(whose weights may already be repacked) but rebuilt on each worker in host memory, by
re-reading the engine's weights with the engine's own loader.

Example::

    from vllm import LLM
    from flashtensors.integrations.vllm import FlashWorkerExtension, save_vllm_checkpoint

    llm = LLM("/models/qwen", tensor_parallel_size=2,
              worker_extension_cls=FlashWorkerExtension.QUALNAME)
    save_vllm_checkpoint(llm, "/models/qwen-tp2")
    # later: vllm serve /models/qwen-tp2 --load-format flash --tensor-parallel-size 2
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from flashtensors import flash
from flashtensors.checkpoint import holds_flash
from flashtensors.errors import FlashError, FlashFormatError

RANK_DIR = "flash-rank-{rank}-of-{size}"
_RANK_DIR_RE = re.compile(r"flash-rank-(\d+)-of-(\d+)")
# Files of a model directory that hold weights, which save_vllm_checkpoint does not copy.
def rank_dir(root, rank: int, size: int) -> Path:
    """The directory of tensor-parallel rank ``rank`` of ``size`` inside model directory ``root``.

    Example:
        >>> rank_dir("/models/m", 1, 2)
        PosixPath('/models/m/flash-rank-1-of-2')
    """
    return Path(root) / RANK_DIR.format(rank=rank, size=size)


def saved_tp_sizes(root) -> list[int]:
    """The tensor-parallel sizes for which ``root`` holds per-rank checkpoints, sorted.

    Example:
        >>> saved_tp_sizes("/models/qwen-tp2")
        [2]
    """
    root = Path(root)
    if not root.is_dir():
        return []
    sizes = set()
    for child in root.iterdir():
        m = _RANK_DIR_RE.fullmatch(child.name)
        if m and holds_flash(child):
            sizes.add(int(m.group(2)))
    return sorted(sizes)


def tp_rank_and_size() -> tuple[int, int]:
    """This worker's (tensor-parallel rank, tensor-parallel size)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def _refuse_pipeline_parallelism() -> None:
    from vllm.distributed import get_pp_group

    if get_pp_group().world_size > 1:
        raise FlashError("per-rank flash checkpoints support tensor parallelism only, not pipeline parallelism")


def load_rank(model, root, *, verify: bool = False, threads: int | None = None) -> None:
    """Copies this worker's per-rank checkpoint in ``root`` into ``model``'s parameters and buffers.

    Raises:
        FlashFormatError: ``root`` has no checkpoint for this tensor-parallel size, or it
            does not match the model (missing, unexpected or differently shaped tensors).
    """
    import torch

    _refuse_pipeline_parallelism()
    rank, size = tp_rank_and_size()
    path = rank_dir(root, rank, size)
    if not holds_flash(path):
        sizes = saved_tp_sizes(root)
        raise FlashFormatError(
            f"{root}: no per-rank flash checkpoint for tensor-parallel size {size} "
            f"(rank {rank} would read {path.name}); it holds per-rank checkpoints for "
            f"tensor-parallel size(s) {sizes}. Serve it with --tensor-parallel-size "
            f"{' or '.join(map(str, sizes))}, or add a full checkpoint (flash_index.json) to "
            f"load at any size."
        )
    if verify:
        flash.verify(path, threads=threads)
    saved = flash.read_index(path).tensors
    targets = model.state_dict()
    missing = [n for n in targets if n not in saved]
    unexpected = [n for n in saved if n not in targets]
    if missing or unexpected:
        raise FlashFormatError(
            f"{path}: the checkpoint does not match the model: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]} (was it saved from another model or vLLM version?)"
        )
    # Straight from the files into the parameters: no second copy of the weights.
    with torch.no_grad():
        flash.load_into(path, targets, threads=threads)


def save_worker_rank(worker, path: str, overwrite: bool = False) -> str | None:
    """Runs on a vLLM worker: writes its rank's checkpoint into model directory ``path``.

    Returns the rank directory written, or ``None`` on data-parallel replicas other than
    the first (they would write the same files). Called by
    :func:`~flashtensors.integrations.vllm.worker_extension.save_vllm_checkpoint`.
    """
    config = worker.vllm_config
    if config.parallel_config.data_parallel_rank != 0:
        return None
    _refuse_pipeline_parallelism()
    rank, size = tp_rank_and_size()
    state = _state_before_processing(config)
    out = rank_dir(path, rank, size)
    flash.save_dict(
        state,
        out,
        overwrite=overwrite,
        metadata={"vllm.tensor_parallel_rank": str(rank), "vllm.tensor_parallel_size": str(size)},
    )
    return str(out)


def _state_before_processing(config) -> dict:
    """This rank's state dict as the engine's loader produces it, before post-load processing.

    Builds a second instance of the model in host memory and loads it with the loader the
    engine was started with (so any load format works), without the kernel-specific
    processing that ``load_model`` applies afterwards.
    """
    import torch
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    loader = get_model_loader(config.load_config)
    with _own_layer_registry(config.compilation_config):
        with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
            model = initialize_model(vllm_config=config, model_config=config.model_config)
        loader.load_weights(model, config.model_config)
    return model.state_dict()


@contextmanager
def _own_layer_registry(compilation_config):
    """Lets a second model instance be built in a running worker.

    vLLM's attention and MoE layers register themselves by name in the compilation config
    at construction and refuse duplicate names; the serving model's entries must stay as
    they are. The second instance registers into empty stand-ins that are dropped after.
    """
    saved = compilation_config.static_forward_context, compilation_config.static_all_moe_layers
    compilation_config.static_forward_context, compilation_config.static_all_moe_layers = {}, []
    try:
        yield
    finally:
        compilation_config.static_forward_context, compilation_config.static_all_moe_layers = saved
