"""Shared fixtures. GPU tests carry the `gpu` marker and skip cleanly without CUDA."""

import os

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


@pytest.fixture
def sock():
    """A socket path for a cache daemon, in a private directory removed afterwards."""
    from cache_helpers import socket_dir

    with socket_dir() as d:
        yield os.path.join(d, "cache.sock")


@pytest.fixture
def daemon(sock):
    """A real cache daemon process on ``sock``, stopped afterwards."""
    from cache_helpers import Daemon

    with Daemon(sock) as d:
        yield d
