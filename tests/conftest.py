"""Shared fixtures. GPU tests carry the `gpu` marker and skip cleanly without CUDA."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ckpt(tmp_path):
    """A path for a checkpoint directory that does not exist yet."""
    return tmp_path / "ckpt"
