"""transformers' from_pretrained reading flash checkpoints (flashtensors.integrations.transformers).

Every test builds real tiny models (tests/support/tiny_models.py), saves them both as safetensors
(transformers' own save_pretrained) and as flash, loads both and compares bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    AutoModel,
    AutoTokenizer,
    modeling_utils,  # noqa: E402
)

import flashtensors  # noqa: E402
from flashtensors import FlashChecksumError, FlashError, FlashFormatError, flash  # noqa: E402
from flashtensors.integrations import transformers as flash_tf  # noqa: E402

from model_checks import assert_same_model, load_model, output, tied_pairs  # noqa: E402
from tiny_models import ARCHS, VOCAB_SIZE, make_model, make_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("transformers_patched")  # unpatched after each test


def save_both(model, tmp_path, **flash_kwargs):
    """(safetensors dir, flash dir) of ``model``."""
    st_dir, fl_dir = tmp_path / "safetensors", tmp_path / "flash"
    model.save_pretrained(st_dir)
    flash_tf.save_pretrained(model, fl_dir, **flash_kwargs)
    return st_dir, fl_dir


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_flash_loads_like_safetensors(arch, tmp_path):
    model = make_model(arch)
    st_dir, fl_dir = save_both(model, tmp_path)
    assert not list(fl_dir.glob("*.safetensors*"))

    from_st, st_info = load_model(arch, st_dir, output_loading_info=True)
    from_fl, fl_info = load_model(arch, fl_dir, output_loading_info=True)

    assert_same_model(from_fl, from_st)
    assert_same_model(from_fl, model)
    assert fl_info == st_info
    assert tied_pairs(from_fl) == tied_pairs(from_st) == tied_pairs(model)


def test_tied_embeddings_stay_tied(tmp_path):
    model = make_model("gpt2")
    _, fl_dir = save_both(model, tmp_path)
    assert "lm_head.weight" not in flash.read_index(fl_dir).tensors  # saved once, as transformers does

    loaded = load_model("gpt2", fl_dir)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_buffers_match(tmp_path):
    """Non-persistent buffers (rotary inv_freq) are rebuilt exactly as from safetensors."""
    st_dir, fl_dir = save_both(make_model("llama"), tmp_path)
    a, b = load_model("llama", st_dir), load_model("llama", fl_dir)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys() and buffers_a
    for name in buffers_a:
        assert torch.equal(buffers_a[name], buffers_b[name]), name


@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": torch.bfloat16}, {"torch_dtype": torch.float16}, {"dtype": "auto"}, {"dtype": "float64"},
     {"low_cpu_mem_usage": True}],
    ids=["dtype", "torch_dtype", "auto", "str", "low_cpu_mem_usage"],
)
def test_load_kwargs(kwargs, tmp_path):
    st_dir, fl_dir = save_both(make_model("qwen2", dtype=torch.bfloat16), tmp_path)
    from_st, from_fl = load_model("qwen2", st_dir, **kwargs), load_model("qwen2", fl_dir, **kwargs)
    assert from_fl.dtype == from_st.dtype
    assert_same_model(from_fl, from_st)


def test_dtype_auto_without_config_dtype(tmp_path):
    """With no dtype in config.json, "auto" reads it from the weights, for flash as for safetensors."""
    st_dir, fl_dir = save_both(make_model("llama", dtype=torch.bfloat16), tmp_path)
    for path in (st_dir, fl_dir):
        config = json.loads((path / "config.json").read_text())
        del config["dtype"]
        (path / "config.json").write_text(json.dumps(config))

    from_st, from_fl = load_model("llama", st_dir, dtype="auto"), load_model("llama", fl_dir, dtype="auto")
    assert from_fl.dtype == from_st.dtype == torch.bfloat16
    assert_same_model(from_fl, from_st)


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential", "cpu", {"": "cpu"}])
def test_device_map_on_cpu(device_map, tmp_path):
    st_dir, fl_dir = save_both(make_model("llama"), tmp_path)
    from_st = load_model("llama", st_dir, device_map=device_map)
    from_fl = load_model("llama", fl_dir, device_map=device_map)
    assert getattr(from_fl, "hf_device_map", None) == getattr(from_st, "hf_device_map", None)
    assert_same_model(from_fl, from_st)


def test_device_map_with_disk_offload(tmp_path):
    """A map that splits the model (some modules offloaded to disk) is followed as transformers does."""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    st_dir, fl_dir = save_both(make_model("llama"), tmp_path)
    from_st = load_model("llama", st_dir, device_map=device_map, offload_folder=tmp_path / "offload_st")
    from_fl = load_model("llama", fl_dir, device_map=device_map, offload_folder=tmp_path / "offload_fl")
    assert from_fl.hf_device_map == from_st.hf_device_map == device_map
    assert from_fl.lm_head.weight.device.type == "meta"  # offloaded, like the safetensors load
    assert torch.equal(output(from_fl), output(from_st))


@pytest.mark.gpu
@pytest.mark.parametrize("device_map", ["cuda:0", 0, "auto", {"model": 0, "lm_head": "cpu"}])
def test_device_map_on_gpu(device_map, tmp_path):
    st_dir, fl_dir = save_both(make_model("llama"), tmp_path)
    kwargs = dict(device_map=device_map, dtype=torch.bfloat16)
    from_st, from_fl = load_model("llama", st_dir, **kwargs), load_model("llama", fl_dir, **kwargs)
    assert from_fl.model.embed_tokens.weight.device == torch.device("cuda", 0)
    assert_same_model(from_fl, from_st)


def test_tensors_are_read_onto_their_parameters_devices():
    """Each checkpoint tensor is read straight onto the device transformers gives its parameter,
    after transformers' key renaming (here a head model's "bert." prefix); disk means read to CPU."""
    from flashtensors.integrations.transformers.loading import device_placement

    model = make_model("bert")
    device_map = {"embeddings": 1, "encoder.layer.0": 0, "encoder.layer.1": "disk", "pooler": "cpu"}
    config = modeling_utils.LoadStateDictConfig(device_map=device_map, weight_mapping=[])
    names = ["bert." + name for name in model.state_dict()] + ["cls.predictions.bias"]

    placement = device_placement(model, config, names)
    assert placement["bert.embeddings.word_embeddings.weight"] == 1
    assert placement["bert.encoder.layer.0.attention.self.query.weight"] == 0
    assert placement["bert.encoder.layer.1.output.dense.bias"] == "cpu"
    assert placement["bert.pooler.dense.weight"] == "cpu"
    assert placement["cls.predictions.bias"] == "cpu"  # not in the model: unexpected, read to CPU
    assert device_placement(model, modeling_utils.LoadStateDictConfig(device_map={"": 0}), names) == 0


def test_base_model_from_head_checkpoint(tmp_path):
    """Checkpoint keys renamed by transformers (here the "bert." prefix dropped) load as from safetensors."""
    head_model = transformers.BertForMaskedLM(make_model("bert").config).eval()
    st_dir, fl_dir = save_both(head_model, tmp_path)
    torch.manual_seed(0)  # the pooler is missing from the checkpoint: initialised alike in both
    from_st, st_info = AutoModel.from_pretrained(st_dir, output_loading_info=True)
    torch.manual_seed(0)
    from_fl, fl_info = AutoModel.from_pretrained(fl_dir, output_loading_info=True)
    assert fl_info == st_info
    assert_same_model(from_fl, from_st)


def test_tokenizer_saved_beside_weights(tmp_path):
    tok = make_tokenizer()
    path = flash_tf.save_pretrained(make_model("qwen3" if "qwen3" in ARCHS else "qwen2"), tmp_path / "m",
                                    tokenizer=tok)
    assert {"config.json", "generation_config.json", "flash_index.json", "tokenizer.json"} <= {
        p.name for p in path.iterdir()}
    loaded = AutoTokenizer.from_pretrained(path)
    assert len(loaded) == VOCAB_SIZE
    assert loaded("flash tensors")["input_ids"] == tok("flash tensors")["input_ids"]


# --- corrupt checkpoints ------------------------------------------------------------------------


def data_file(path):
    return next(path.glob("*.flash"))


def test_truncated_data_file_raises(tmp_path):
    _, fl_dir = save_both(make_model("llama"), tmp_path)
    f = data_file(fl_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(FlashFormatError):
        load_model("llama", fl_dir)


def test_garbled_index_raises(tmp_path):
    _, fl_dir = save_both(make_model("llama"), tmp_path)
    (fl_dir / flashtensors.INDEX_FILENAME).write_text("{not json")
    with pytest.raises(FlashFormatError):
        load_model("llama", fl_dir)


def test_flipped_bit_raises_with_verify(tmp_path):
    _, fl_dir = save_both(make_model("llama"), tmp_path)
    f = data_file(fl_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside some tensor's bytes
    f.write_bytes(bytes(data))
    flash_tf.patch(verify=True)
    with pytest.raises(FlashChecksumError):
        load_model("llama", fl_dir)


# --- patch / unpatch ----------------------------------------------------------------------------


def test_safetensors_dirs_load_as_before(tmp_path):
    model = make_model("gpt2")
    model.save_pretrained(tmp_path / "st")
    patched = load_model("gpt2", tmp_path / "st")
    flash_tf.unpatch()
    assert_same_model(patched, load_model("gpt2", tmp_path / "st"))


def test_use_safetensors_prefers_safetensors(tmp_path):
    """A directory holding both formats reads flash, unless the caller asks for safetensors."""
    path = tmp_path / "both"
    make_model("llama", seed=1).save_pretrained(path)
    flash.save_dict(make_model("llama", seed=2).state_dict(), path)

    assert_same_model(load_model("llama", path), make_model("llama", seed=2))
    assert_same_model(load_model("llama", path, use_safetensors=True), make_model("llama", seed=1))


def test_patch_is_idempotent_and_unpatch_restores():
    flash_tf.unpatch()
    originals = (modeling_utils._get_resolved_checkpoint_files, modeling_utils._get_dtype,
                 modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"])
    assert not flash_tf.is_patched()

    flash_tf.patch()
    hooked = modeling_utils._get_resolved_checkpoint_files
    flash_tf.patch()
    assert flash_tf.is_patched() and modeling_utils._get_resolved_checkpoint_files is hooked
    assert hooked is not originals[0]

    flash_tf.unpatch()
    assert not flash_tf.is_patched()
    assert (modeling_utils._get_resolved_checkpoint_files, modeling_utils._get_dtype,
            modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"]) == originals
    flash_tf.unpatch()  # a second unpatch does nothing


def test_unpatched_transformers_cannot_read_flash(tmp_path):
    _, fl_dir = save_both(make_model("llama"), tmp_path)
    flash_tf.unpatch()
    with pytest.raises(OSError, match="model.safetensors"):
        load_model("llama", fl_dir)


def test_patch_transformers_one_liner(tmp_path):
    flash_tf.unpatch()
    flashtensors.patch_transformers()
    assert flash_tf.is_patched()


def test_unsupported_version_is_refused(monkeypatch):
    flash_tf.unpatch()
    monkeypatch.setattr("transformers.__version__", "4.57.1")  # the module now in sys.modules
    with pytest.raises(flash_tf.UnsupportedTransformersError, match="4.57.1"):
        flash_tf.patch()
    assert not flash_tf.is_patched()


# --- save_pretrained ----------------------------------------------------------------------------


def test_save_refuses_to_clobber(tmp_path):
    model = make_model("llama")
    path = flash_tf.save_pretrained(model, tmp_path / "m")
    with pytest.raises(FlashError, match="overwrite=True"):
        flash_tf.save_pretrained(make_model("llama", seed=3), path)
    assert_same_model(load_model("llama", path), model)

    flash_tf.save_pretrained(make_model("llama", seed=3), path, overwrite=True)
    assert_same_model(load_model("llama", path), make_model("llama", seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging left behind


def test_sharded_save_is_one_checkpoint(tmp_path):
    """transformers' shards stream into one flash checkpoint; no safetensors index is left."""
    model = make_model("llama")
    path = flash_tf.save_pretrained(model, tmp_path / "m", max_shard_size="100KB")
    assert not list(path.glob("*.safetensors*"))
    assert_same_model(load_model("llama", path), model)


def test_failed_save_leaves_nothing(tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        flash_tf.save_pretrained(make_model("llama"), tmp_path / "m", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []
    assert modeling_utils.safe_save_file.__module__ == "safetensors.torch"  # writer swap undone


def test_without_transformers_the_patch_says_what_is_missing():
    """Where transformers is not installed, patch_transformers() raises a FlashError that
    names what to install, not an ImportError from deep inside the hooks."""
    import subprocess
    import sys

    code = """
import importlib.abc, sys
class NoTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "transformers":
            raise ModuleNotFoundError("No module named 'transformers'")
sys.meta_path.insert(0, NoTransformers())
import flashtensors
try:
    flashtensors.patch_transformers()
except flashtensors.FlashError as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("UnsupportedTransformersError"), (out.stdout, out.stderr[-2000:])
    assert "transformers>=" in out.stdout
