"""device_map resolution: accelerate's prefix rules, shorthand forms, and clear errors."""

import pytest
import torch

from flashtensors import FlashError, flash
from flashtensors.device_map import device_for, normalize_device_map
from flashtensors.errors import FlashDeviceError

CPU = torch.device("cpu")


def test_longest_prefix_wins_and_dots_delimit():
    dmap = {"": "cpu", "model": "cpu", "model.layers.1": "cpu"}
    normalized = normalize_device_map(dmap)
    assert device_for("model.layers.1.weight", normalized) == CPU
    assert device_for("model.layers.10.weight", normalized) == CPU
    with pytest.raises(FlashDeviceError, match="modelx"):
        device_for("modelx", normalize_device_map({"model": "cpu"}))
    assert device_for("model", normalize_device_map({"model": "cpu"})) == CPU


def test_shorthands():
    for value in (None, "cpu", CPU):
        assert normalize_device_map(value) == {"": CPU}
    assert normalize_device_map({"a": "cpu", "b": CPU}) == {"a": CPU, "b": CPU}


@pytest.mark.parametrize("bad", ["tpu", "disk", 3.5, True, "cuda:x"])
def test_invalid_devices_are_refused(bad):
    with pytest.raises(FlashDeviceError):
        normalize_device_map({"": bad})


def test_missing_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(FlashDeviceError, match="CUDA is not available"):
        normalize_device_map({"": 0})
    with pytest.raises(FlashDeviceError, match="CUDA is not available"):
        normalize_device_map("cuda:0")


def test_non_string_keys_are_refused():
    with pytest.raises(FlashDeviceError, match="strings"):
        normalize_device_map({0: "cpu"})


def test_uncovered_tensor_is_named(ckpt):
    flash.save_dict({"encoder.w": torch.randn(2), "decoder.w": torch.randn(2)}, ckpt)
    with pytest.raises(FlashError, match="decoder.w"):
        flash.load_dict(ckpt, {"encoder": "cpu"})


def test_partial_maps_load_what_they_cover(ckpt):
    sd = {"encoder.w": torch.randn(2), "decoder.w": torch.randn(3)}
    flash.save_dict(sd, ckpt)
    out = flash.load_dict(ckpt, {"encoder": "cpu", "decoder": CPU})
    assert torch.equal(out["decoder.w"], sd["decoder.w"])
