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


@pytest.fixture(autouse=True)
def _outside_the_source_tree(tmp_path, monkeypatch):
    """Runs every test (and the Python subprocesses it starts, which put their working
    directory first on sys.path) outside the repository, so they import the installed
    flashtensors, with its compiled core, and not the source tree beside it."""
    monkeypatch.chdir(tmp_path)
