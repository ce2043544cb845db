"""Resolving a device_map: which device each tensor goes to.

The rules follow accelerate/transformers: keys are name prefixes, a tensor matches key
``k`` when its name equals ``k`` or starts with ``k + "."``, ``""`` matches everything,
and the longest matching key wins. Values are a GPU index, ``"cuda:N"``, ``"cpu"`` or a
``torch.device``. ``None`` means everything on the CPU.
"""

from __future__ import annotations

from .errors import FlashDeviceError

DEFAULT_DEVICE = "cpu"


def normalize_device_map(device_map) -> dict:
    """Returns ``{prefix: torch.device}`` with every device checked to exist here.

    Example:
        >>> normalize_device_map({"model.layers": 0, "lm_head": "cpu"})
        {'model.layers': device(type='cuda', index=0), 'lm_head': device(type='cpu')}
    """
    import torch

    if device_map is None or device_map == DEFAULT_DEVICE:
        return {"": torch.device(DEFAULT_DEVICE)}
    if not isinstance(device_map, dict):
        device_map = {"": device_map}
    out = {}
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise FlashDeviceError(f"device_map keys must be strings (name prefixes), got {key!r}")
        out[key] = to_device(value, f"device_map[{key!r}] = {value!r}")
    return out


def to_device(value, label: str):
    """The ``torch.device`` that ``value`` names, checked to exist here; errors begin with
    ``label``, the value as the caller's user wrote it.

    Example:
        >>> to_device("cpu", "--device cpu")
        device(type='cpu')
    """
    import torch

    try:
        if isinstance(value, bool):
            raise TypeError
        device = torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
    except (TypeError, RuntimeError, ValueError):
        raise FlashDeviceError(f"{label} is not a device "
                               "(use a GPU index, 'cuda:N', 'cpu' or a torch.device)") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise FlashDeviceError(f"{label}: flashtensors loads to 'cpu' and 'cuda' devices")
    if not torch.cuda.is_available():
        raise FlashDeviceError(f"{label}, but CUDA is not available on this machine")
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise FlashDeviceError(f"{label}, but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def device_for(name: str, device_map: dict):
    """The device of tensor ``name`` under a normalized map: the longest matching prefix."""
    prefix = name
    while True:
        if prefix in device_map:
            return device_map[prefix]
        if not prefix:
            raise uncovered_error(name, device_map)
        cut = prefix.rfind(".")
        prefix = prefix[:cut] if cut >= 0 else ""


def uncovered_error(name: str, device_map: dict) -> FlashDeviceError:
    """The error for a tensor that no key of ``device_map`` covers."""
    return FlashDeviceError(f"tensor {name!r} is not covered by the device_map (keys: {sorted(device_map)[:8]})")


def device_codes(device_map: dict) -> list:
    """A normalized map as the native planner takes it: ``(prefix, code)`` pairs, code -1
    for the CPU and the index for a CUDA device."""
    return [(prefix, -1 if device.type == "cpu" else device.index) for prefix, device in device_map.items()]


def device_of_code(code: int):
    """The torch.device of a native device code."""
    import torch

    return torch.device("cpu") if code < 0 else torch.device("cuda", code)
