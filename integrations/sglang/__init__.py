"""SGLang integration: ``--load-format flash`` on an unmodified SGLang.

Installing flashtensors registers :func:`register` under SGLang's ``sglang.srt.plugins``
entry point, which SGLang runs in its launcher and in every scheduler (model-worker)
process; nothing needs importing or patching. The model directory holds config.json,
tokenizer files and the weights: a flash checkpoint, or the directory's own safetensors
files read as they are (see :mod:`.loader`).

Supported SGLang versions: :data:`SUPPORTED_SGLANG` (tested with 0.5.23). With another
version the plugin raises :class:`~flashtensors.errors.FlashError` saying so, which SGLang
logs, and ``--load-format flash`` is then not among the command line's choices.

Example::

    python -m sglang.launch_server --model-path /models/qwen --load-format flash
    flashtensors convert /models/qwen /models/qwen-flash      # or flash.save_dict(...)
    python -m sglang.launch_server --model-path /models/qwen-flash --load-format flash \\
        --tp-size 2 --model-loader-extra-config '{"threads": 16}'

    # weights streamed from object storage or a web server; the directory holds config and tokenizer
    python -m sglang.launch_server --model-path "$(flashtensors fetch s3://bucket/qwen)" \\
        --load-format flash --model-loader-extra-config '{"weights": "s3://bucket/qwen"}'

Options (``--model-loader-extra-config``): see :class:`~flashtensors.integrations.loader_options.FlashLoaderConfig`.
"""

from __future__ import annotations

LOAD_FORMAT = "flash"
# The SGLang releases whose plugin hooks (sglang.srt.plugins, add_load_format_choices,
# LoadConfig taking a loader class) this adapter is written against: [low, high).
SUPPORTED_SGLANG = ((0, 5, 23), (0, 6))
_HOOK_TARGET = "sglang.srt.configs.load_config.LoadConfig._verify_load_format"

__all__ = ["LOAD_FORMAT", "SUPPORTED_SGLANG", "register"]

_registered = False


def register() -> None:
    """Adds ``flash`` to SGLang's ``--load-format`` choices and maps it to the flash model
    loader (the ``sglang.srt.plugins`` entry point; SGLang applies the hook after its plugins ran).

    Safe to call any number of times in a process; imports only SGLang's plugin registry
    and its argument choices, and touches no GPU.

    Raises:
        FlashError: the installed SGLang is not one of :data:`SUPPORTED_SGLANG`.

    Example:
        >>> from flashtensors.integrations.sglang import register
        >>> register()   # only needed where SGLang's plugins are restricted (SGLANG_PLUGINS)
    """
    global _registered
    if _registered:
        return
    _check_version()
    from sglang.srt.arg_groups.choices import LOAD_FORMAT_CHOICES, add_load_format_choices
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if LOAD_FORMAT not in LOAD_FORMAT_CHOICES:
        add_load_format_choices([LOAD_FORMAT])
    HookRegistry.register(_HOOK_TARGET, _flash_as_loader_class, HookType.AROUND)
    _registered = True


def _flash_as_loader_class(original, load_config, *args, **kwargs):
    """Around SGLang's ``LoadConfig._verify_load_format``: ``"flash"`` becomes the loader
    class, which SGLang's ``get_model_loader`` instantiates; other formats go on as before."""
    if isinstance(load_config.load_format, str) and load_config.load_format.lower() == LOAD_FORMAT:
        from .loader import FlashModelLoader

        load_config.load_format = FlashModelLoader
        return None
    return original(load_config, *args, **kwargs)


def _check_version(found: str | None = None) -> None:
    """Raises FlashError unless SGLang version ``found`` (default: the installed one) is supported."""
    from importlib.metadata import PackageNotFoundError, version

    from flashtensors.errors import FlashError

    if found is None:
        try:
            found = version("sglang")
        except PackageNotFoundError:
            raise FlashError("--load-format flash for SGLang needs SGLang installed (pip install sglang)") from None
    low, high = SUPPORTED_SGLANG
    if not low <= _release(found) < high:
        raise FlashError(
            f"flashtensors' --load-format flash supports SGLang {_dotted(low)} up to (not including) "
            f"{_dotted(high)}, and SGLang {found} is installed; install a supported SGLang "
            f"(pip install 'sglang>={_dotted(low)},<{_dotted(high)}') or a flashtensors release made for it")


def _release(text: str) -> tuple:
    """The numeric release of a version string: '0.5.23.post1' -> (0, 5, 23), '0.6.0rc1' -> (0, 6, 0)."""
    import re

    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(n) for n in match.group().split(".")) if match else ()


def _dotted(release: tuple) -> str:
    return ".".join(map(str, release))
