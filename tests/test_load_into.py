"""flash.load_into: reading straight into existing tensors."""

import pytest
import torch

from flashtensors import FlashFormatError, flash


@pytest.fixture
def saved(ckpt):
    base = torch.randn(8, 6)
    sd = {"a": torch.randn(1000), "b": torch.arange(12, dtype=torch.int32).reshape(3, 4),
          "t": base.t(), "base": base, "e": torch.empty(0, 2), "h": torch.randn(5).to(torch.bfloat16)}
    flash.save_dict(sd, ckpt)
    return ckpt, sd


def test_fills_targets_in_place(saved):
    ckpt, sd = saved
    targets = {n: torch.zeros_like(t) for n, t in sd.items()}
    pointers = {n: t.data_ptr() for n, t in targets.items()}
    flash.load_into(ckpt, targets)
    for n, t in targets.items():
        assert torch.equal(t, sd[n]), n
        assert t.data_ptr() == pointers[n]


def test_unaligned_targets_and_a_subset(saved):
    ckpt, sd = saved
    arena = torch.zeros(1 + 1000, dtype=torch.float32)
    target = arena[1:]  # 4 bytes past an allocation: no O_DIRECT possible
    flash.load_into(ckpt, {"a": target})
    assert torch.equal(target, sd["a"]) and arena[0] == 0


def test_non_contiguous_target(saved):
    ckpt, sd = saved
    target = torch.zeros(4, 3, dtype=torch.int32).t()
    flash.load_into(ckpt, {"b": target})
    assert torch.equal(target, sd["b"])


@pytest.mark.parametrize("targets, message", [
    ({"nope": torch.zeros(1)}, "no tensor 'nope'"),
    ({"a": torch.zeros(999)}, "'a' is float32\\[1000\\]"),
    ({"a": torch.zeros(1000, dtype=torch.float64)}, "target is float64"),
])
def test_mismatches_are_refused(saved, targets, message):
    ckpt, _ = saved
    with pytest.raises(FlashFormatError, match=message):
        flash.load_into(ckpt, targets)
