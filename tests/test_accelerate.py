"""accelerate's load_checkpoint_in_model and load_checkpoint_and_dispatch reading flash
checkpoint directories, through flashtensors.patch_transformers().

Each load of a flash directory is compared bit for bit (parameters and logits) with the
same call, unpatched, on the same weights saved by transformers' save_pretrained
(safetensors), which accelerate reads itself.
"""

from __future__ import annotations

import pytest
import torch

accelerate = pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from accelerate import init_empty_weights  # noqa: E402
from accelerate.utils import modeling as accelerate_modeling  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from flashtensors import FlashChecksumError, flash  # noqa: E402
from flashtensors.integrations import transformers as flash_tf  # noqa: E402
from flashtensors.integrations.transformers.accelerate_loading import placement  # noqa: E402

from model_checks import SafetensorsReads, assert_same_model, output  # noqa: E402
from tiny_models import make_model  # noqa: E402

DISK_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}


@pytest.fixture(autouse=True)
def patched():
    flash_tf.patch()
    yield
    flash_tf.unpatch()


@pytest.fixture
def dirs(tmp_path):
    """(the model, its safetensors directory, its flash directory)."""
    model = make_model("llama")
    model.save_pretrained(tmp_path / "st")
    flash.save_dict(model.state_dict(), tmp_path / "fl")
    return model, tmp_path / "st", tmp_path / "fl"


def empty(model, tie=False):
    with init_empty_weights():
        out = AutoModelForCausalLM.from_config(model.config).eval()
    if tie:
        out.tie_weights()
    return out


def unpatched(fn):
    flash_tf.unpatch()
    try:
        return fn()
    finally:
        flash_tf.patch()


def test_load_checkpoint_in_model_reads_a_flash_directory(dirs):
    model, st_dir, fl_dir = dirs
    target = AutoModelForCausalLM.from_config(model.config).eval()  # real (CPU) parameters
    with SafetensorsReads() as reads:
        accelerate.load_checkpoint_in_model(target, fl_dir)
    assert [str(p) for p in reads.by_flashtensors] == [str(fl_dir)]
    assert_same_model(target, model)

    by_index = AutoModelForCausalLM.from_config(model.config).eval()
    accelerate.load_checkpoint_in_model(by_index, fl_dir / "flash_index.json")  # the index file names it too
    assert_same_model(by_index, model)


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto", DISK_MAP], ids=["cpu", "auto", "disk"])
def test_load_checkpoint_and_dispatch_like_safetensors(device_map, dirs, tmp_path):
    model, st_dir, fl_dir = dirs
    from_fl = accelerate.load_checkpoint_and_dispatch(empty(model), fl_dir, device_map=device_map,
                                                      offload_folder=tmp_path / "off-fl")
    from_st = unpatched(lambda: accelerate.load_checkpoint_and_dispatch(
        empty(model), st_dir, device_map=device_map, offload_folder=tmp_path / "off-st"))
    if device_map is DISK_MAP:  # offloaded by accelerate, as from safetensors
        assert from_fl.lm_head.weight.device.type == "meta"
        assert sorted(p.name for p in (tmp_path / "off-fl").iterdir()) == \
            sorted(p.name for p in (tmp_path / "off-st").iterdir())
        assert torch.equal(output(from_fl), output(from_st))
    else:
        assert_same_model(from_fl, from_st)
    assert torch.equal(output(from_fl), output(model))


def test_dtype_is_accelerates(dirs):
    model, st_dir, fl_dir = dirs
    from_fl = accelerate.load_checkpoint_and_dispatch(empty(model), fl_dir, device_map={"": "cpu"},
                                                      dtype=torch.bfloat16)
    from_st = unpatched(lambda: accelerate.load_checkpoint_and_dispatch(
        empty(model), st_dir, device_map={"": "cpu"}, dtype=torch.bfloat16))
    assert from_fl.model.embed_tokens.weight.dtype == torch.bfloat16
    assert_same_model(from_fl, from_st)


def test_tied_weights_stay_tied(tmp_path):
    model = make_model("gpt2")
    flash.save_dict(model.state_dict(), tmp_path / "fl")  # shared storage, saved once
    target = empty(model, tie=True)
    loaded = accelerate.load_checkpoint_and_dispatch(target, tmp_path / "fl", device_map={"": "cpu"})
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert_same_model(loaded, model)


def test_unpatched_accelerate_cannot_read_flash(dirs):
    model, _, fl_dir = dirs
    flash_tf.unpatch()
    with pytest.raises(ValueError, match="is not a folder containing a `.index.json` file"):
        accelerate.load_checkpoint_in_model(empty(model), fl_dir, device_map={"": "cpu"})


def test_other_checkpoints_are_left_to_accelerate(dirs):
    model, st_dir, _ = dirs
    with SafetensorsReads() as reads:
        loaded = accelerate.load_checkpoint_and_dispatch(empty(model), st_dir, device_map={"": "cpu"})
    assert reads.by_flashtensors == [] and reads.by_transformers
    assert_same_model(loaded, model)


def test_verify_checks_the_flash_checkpoint(dirs):
    model, _, fl_dir = dirs
    data = next(fl_dir.glob("*.flash"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    flash_tf.patch(verify=True)
    with pytest.raises(FlashChecksumError):
        accelerate.load_checkpoint_in_model(empty(model), fl_dir, device_map={"": "cpu"})


def test_placement_follows_accelerates_rules():
    assert placement(None) == "cpu"
    assert placement({"model": 0, "lm_head": "disk"}) == {"model": 0, "lm_head": "cpu", "": "cpu"}
    assert placement({"": "cuda:1"}) == {"": "cuda:1"}


def test_patch_and_unpatch_swap_every_reference():
    flash_tf.unpatch()
    modules = [accelerate, accelerate.utils, accelerate_modeling, accelerate.big_modeling]
    originals = [m.load_checkpoint_in_model for m in modules] + [accelerate_modeling.load_state_dict]
    assert len({id(f) for f in originals[:-1]}) == 1

    flash_tf.patch()
    flash_tf.patch()  # idempotent
    hooked = [m.load_checkpoint_in_model for m in modules] + [accelerate_modeling.load_state_dict]
    assert all(h is not o for h, o in zip(hooked, originals))
    assert all(h.__wrapped__ is o for h, o in zip(hooked, originals))

    flash_tf.unpatch()
    assert [m.load_checkpoint_in_model for m in modules] + [accelerate_modeling.load_state_dict] == originals


@pytest.mark.gpu
def test_dispatch_onto_a_gpu(dirs):
    model, st_dir, fl_dir = dirs
    device_map = {"model": 0, "lm_head": "cpu"}
    from_fl = accelerate.load_checkpoint_and_dispatch(empty(model), fl_dir, device_map=device_map)
    from_st = unpatched(lambda: accelerate.load_checkpoint_and_dispatch(empty(model), st_dir, device_map=device_map))
    assert from_fl.model.embed_tokens.weight.device == torch.device("cuda", 0)
    assert_same_model(from_fl, from_st)
