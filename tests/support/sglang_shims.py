"""Import shims that let SGLang's model code be imported on this CPU-only machine (tests only).

SGLang's multimodal helpers import ``torchvision`` at module level, and the torchvision
wheel on PyPI is CUDA-linked: beside the CPU torch its import fails (CI removes it). These
shims stand in for the missing imports only; SGLang's loading code runs unmodified.

Example::

    import sglang_shims
    sglang_shims.install()      # before the first `import sglang`
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

# Imported by SGLang's model registry (InternVL and other vision models' helpers), never
# called by the text models the tests load.
TORCHVISION_MODULES = ("torchvision", "torchvision.io", "torchvision.transforms",
                       "torchvision.transforms.functional", "torchvision.transforms.v2")


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (``T.InterpolationMode.BICUBIC``)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def install() -> list[str]:
    """Installs the shims this environment needs; returns the names of the modules stood in for."""
    installed = []
    if not _imports("torchvision"):
        # transformers decides once, at import, that torchvision is absent; import it first so
        # that the placeholder cannot make it take the torchvision code paths.
        import transformers  # noqa: F401
        from transformers.utils import import_utils

        assert not import_utils.is_torchvision_available()
        for name in TORCHVISION_MODULES:
            module = _PlaceholderModule(name)
            module.__path__ = []
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            sys.modules[name] = module
            installed.append(name)
    return installed


def _imports(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None and bool(__import__(name))
    except Exception:  # noqa: BLE001 -- a broken (CUDA-linked) wheel fails in many ways
        return False
