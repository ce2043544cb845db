"""Which file names hold model weights (of any framework, flash included) or a weight
index: what `convert` and `fetch` leave out when they copy a model's other files (config,
tokenizer, ...)."""

from __future__ import annotations

from pathlib import PurePath

from .format import INDEX_FILENAME

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
OTHER_WEIGHT_SUFFIXES = (".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".flash")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + OTHER_WEIGHT_SUFFIXES
INDEX_SUFFIX = ".index.json"


def is_weight_file(path: PurePath) -> bool:
    """Whether ``path`` holds weights (of any framework, flash included) or a weight index.

    Example:
        >>> is_weight_file(PurePath("model.safetensors.index.json")), is_weight_file(PurePath("config.json"))
        (True, False)
    """
    name = path.name
    if name == INDEX_FILENAME:
        return True
    if name.endswith(INDEX_SUFFIX):  # model.safetensors.index.json, pytorch_model.bin.index.json, ...
        name = name[: -len(INDEX_SUFFIX)]
    return name.endswith(WEIGHT_SUFFIXES)
