"""transformers' from_pretrained reading plain safetensors through flashtensors.

With the patch on (``safetensors=True``, the default), a model directory holding only
safetensors weights, as transformers' own ``save_pretrained`` writes them, loads through
flashtensors' engine, and transformers' safetensors reader is never called (see
model_checks.SafetensorsReads); every load is compared bit for bit with an unpatched one.
``patch(safetensors=False)`` leaves them to transformers again.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import flashtensors  # noqa: E402
from flashtensors import FlashFormatError, flash  # noqa: E402
from flashtensors.integrations import transformers as flash_tf  # noqa: E402
from flashtensors.integrations.transformers import loading  # noqa: E402

from model_checks import SafetensorsReads, assert_same_model, load_model, output, tied_pairs  # noqa: E402
from tiny_models import ARCHS, make_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("transformers_patched")  # unpatched after each test


def load_both(arch, path, **kwargs):
    """(patched load, unpatched load, reads of the patched load) of ``path``."""
    with SafetensorsReads() as reads:
        patched = load_model(arch, path, **kwargs)
    flash_tf.unpatch()
    try:
        unpatched = load_model(arch, path, **kwargs)
    finally:
        flash_tf.patch()
    return patched, unpatched, reads


def assert_read_by_flashtensors(reads, *sources):
    assert reads.by_transformers == []
    assert [str(s) for s in reads.by_flashtensors] == [str(s) for s in sources]


@pytest.mark.parametrize("arch", ARCHS)
def test_safetensors_load_through_flashtensors_like_transformers(arch, tmp_path):
    model = make_model(arch)
    model.save_pretrained(tmp_path / "m")

    with SafetensorsReads() as reads:
        patched, patched_info = load_model(arch, tmp_path / "m", output_loading_info=True)
    flash_tf.unpatch()
    unpatched, unpatched_info = load_model(arch, tmp_path / "m", output_loading_info=True)

    assert_read_by_flashtensors(reads, tmp_path / "m" / "model.safetensors")
    assert_same_model(patched, unpatched)
    assert_same_model(patched, model)
    assert patched_info == unpatched_info
    assert tied_pairs(patched) == tied_pairs(unpatched) == tied_pairs(model)


def test_safetensors_false_leaves_safetensors_to_transformers(tmp_path):
    """The counter sees transformers' reader when it is used: the other tests' zero is real."""
    make_model("llama").save_pretrained(tmp_path / "m")
    flashtensors.patch_transformers(safetensors=False)
    with SafetensorsReads() as reads:
        model = load_model("llama", tmp_path / "m")
    assert reads.by_transformers and reads.by_flashtensors == []
    assert_same_model(model, make_model("llama"))

    flash_tf.patch()  # back to the default
    with SafetensorsReads() as reads:
        load_model("llama", tmp_path / "m")
    assert reads.by_transformers == [] and len(reads.by_flashtensors) == 1


def test_flash_still_loads_with_safetensors_false(tmp_path):
    model = make_model("llama")
    flash_tf.save_pretrained(model, tmp_path / "fl")
    flash_tf.patch(safetensors=False)
    with SafetensorsReads() as reads:
        assert_same_model(load_model("llama", tmp_path / "fl"), model)
    assert_read_by_flashtensors(reads, tmp_path / "fl")


def test_sharded_checkpoint_is_read_as_one(tmp_path):
    """save_pretrained's shards (named by model.safetensors.index.json) are one engine load."""
    model = make_model("llama")
    model.save_pretrained(tmp_path / "m", max_shard_size="100KB")
    assert len(list((tmp_path / "m").glob("*.safetensors"))) > 2
    patched, unpatched, reads = load_both("llama", tmp_path / "m")
    assert_read_by_flashtensors(reads, tmp_path / "m")
    assert_same_model(patched, unpatched)
    assert_same_model(patched, model)


def test_tied_embeddings_stay_tied(tmp_path):
    make_model("gpt2").save_pretrained(tmp_path / "m", max_shard_size="100KB")
    patched, unpatched, reads = load_both("gpt2", tmp_path / "m")
    assert reads.by_transformers == []
    assert patched.lm_head.weight is patched.transformer.wte.weight
    assert_same_model(patched, unpatched)


@pytest.mark.parametrize(
    "kwargs",
    [{"dtype": torch.bfloat16}, {"dtype": "auto"}, {"dtype": "float64"}, {"low_cpu_mem_usage": True}],
    ids=["dtype", "auto", "str", "low_cpu_mem_usage"],
)
def test_load_kwargs(kwargs, tmp_path):
    make_model("qwen2", dtype=torch.bfloat16).save_pretrained(tmp_path / "m")
    patched, unpatched, reads = load_both("qwen2", tmp_path / "m", **kwargs)
    assert reads.by_transformers == []
    assert patched.dtype == unpatched.dtype
    assert_same_model(patched, unpatched)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_dtype_auto_without_config_dtype_reads_no_header_with_transformers(sharded, tmp_path):
    """With no dtype in config.json, "auto" takes the weights' dtype from flashtensors'
    parse of the header, which transformers would otherwise open itself."""
    make_model("llama", dtype=torch.bfloat16).save_pretrained(tmp_path / "m",
                                                              max_shard_size="100KB" if sharded else "5GB")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["dtype"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))

    patched, unpatched, reads = load_both("llama", tmp_path / "m", dtype="auto")
    assert reads.by_transformers == []
    assert patched.dtype == unpatched.dtype == torch.bfloat16
    assert_same_model(patched, unpatched)


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential", "cpu", {"": "cpu"}])
def test_device_map_on_cpu(device_map, tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m", max_shard_size="100KB")
    patched, unpatched, reads = load_both("llama", tmp_path / "m", device_map=device_map)
    assert reads.by_transformers == []
    assert getattr(patched, "hf_device_map", None) == getattr(unpatched, "hf_device_map", None)
    assert_same_model(patched, unpatched)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_device_map_with_disk_offload(sharded, tmp_path):
    """Offloaded weights point into the original safetensors files, as unpatched: nothing is
    re-saved, so no offload_folder is needed. (For a single file, transformers itself lists
    its tensor names with safe_open to build that index.)"""
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    make_model("llama").save_pretrained(tmp_path / "m", max_shard_size="100KB" if sharded else "5GB")
    patched, unpatched, reads = load_both("llama", tmp_path / "m", device_map=device_map)
    single = tmp_path / "m" / "model.safetensors"
    assert [str(s) for s in reads.by_flashtensors] == [str(tmp_path / "m" if sharded else single)]
    assert reads.by_transformers == ([] if sharded else [str(single)])  # the names, for the offload index
    assert patched.hf_device_map == unpatched.hf_device_map == device_map
    assert patched.lm_head.weight.device.type == "meta"  # offloaded, like the unpatched load
    assert torch.equal(output(patched), output(unpatched))


def test_variant_files_are_read_by_flashtensors(tmp_path):
    model = make_model("llama")
    model.save_pretrained(tmp_path / "m")
    make_model("llama", seed=5).save_pretrained(tmp_path / "m", variant="v2")
    patched, unpatched, reads = load_both("llama", tmp_path / "m", variant="v2")
    assert_read_by_flashtensors(reads, tmp_path / "m" / "model.v2.safetensors")
    assert_same_model(patched, unpatched)
    assert_same_model(patched, make_model("llama", seed=5))


def test_use_safetensors_beside_a_flash_checkpoint_reads_the_files(tmp_path):
    """A directory holding both formats loads flash; use_safetensors=True loads the
    safetensors files, still through flashtensors (file by file: the directory means flash)."""
    path = tmp_path / "both"
    make_model("llama", seed=1).save_pretrained(path, max_shard_size="100KB")
    flash.save_dict(make_model("llama", seed=2).state_dict(), path)

    with SafetensorsReads() as reads:
        assert_same_model(load_model("llama", path), make_model("llama", seed=2))
        assert_same_model(load_model("llama", path, use_safetensors=True), make_model("llama", seed=1))
    shards = sorted(str(p) for p in path.glob("*.safetensors"))
    assert reads.by_transformers == []
    assert [str(s) for s in reads.by_flashtensors] == [str(path)] + shards


def test_sources_are_the_directory_only_when_it_means_exactly_these_files(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m", max_shard_size="100KB")
    shards = sorted(str(p) for p in (tmp_path / "m").glob("*.safetensors"))
    assert loading.safetensors_sources(shards) == [str(tmp_path / "m")]
    assert loading.safetensors_sources(shards[:2]) == shards[:2]
    one = str(tmp_path / "m" / "model-00001-of-00002.safetensors")
    assert loading.safetensors_sources([one]) == [one]


def test_truncated_safetensors_file_raises_naming_it(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(FlashFormatError, match="model.safetensors"):
        load_model("llama", tmp_path / "m")


def test_verify_refuses_safetensors(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m")
    flash_tf.patch(verify=True)
    with pytest.raises(FlashFormatError, match=r"model\.safetensors: patch\(verify=True\) checks"):
        load_model("llama", tmp_path / "m")
    flash_tf.patch(verify=True, safetensors=False)  # left to transformers: loads, unverified
    assert_same_model(load_model("llama", tmp_path / "m"), make_model("llama"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a device flashtensors cannot read to")
def test_devices_flashtensors_cannot_target_are_left_to_transformers(tmp_path):
    """Safetensors bound for a device flashtensors does not read to ("mps", or here a CUDA
    device on a machine without one) are left to transformers: the same outcome as unpatched."""
    make_model("llama").save_pretrained(tmp_path / "m")
    errors = []
    for patch_on in (True, False):
        if not patch_on:
            flash_tf.unpatch()
        with SafetensorsReads() as reads, pytest.raises(Exception) as e:
            load_model("llama", tmp_path / "m", device_map={"": "cuda:0"})
        errors.append((type(e.value), str(e.value)))
        assert reads.by_flashtensors == []
    assert errors[0] == errors[1]


@pytest.mark.gpu
@pytest.mark.parametrize("device_map", ["cuda:0", "auto", {"model": 0, "lm_head": "cpu"}])
def test_device_map_on_gpu(device_map, tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m", max_shard_size="100KB")
    patched, unpatched, reads = load_both("llama", tmp_path / "m", device_map=device_map, dtype=torch.bfloat16)
    assert reads.by_transformers == []
    assert patched.model.embed_tokens.weight.device == torch.device("cuda", 0)
    assert_same_model(patched, unpatched)
