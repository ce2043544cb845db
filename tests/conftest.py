"""Shared fixtures. GPU tests carry the `gpu` marker and skip cleanly without CUDA."""

import os
from pathlib import Path

import pytest
import torch

SUPPORT = Path(__file__).parent / "support"  # the helper modules, on pytest's pythonpath
pytest.register_assert_rewrite("helpers")  # assert_same's failures show the values compared


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


@pytest.fixture
def small_pieces(monkeypatch):
    """Remote reads in pieces of 8 KiB, so that every tensor is read in many range requests."""
    from flashtensors import reading

    monkeypatch.setattr(reading, "CHUNK_BYTES", 8 << 10)  # every path reads it when a load runs


@pytest.fixture
def transformers_patched():
    """transformers patched (flashtensors' defaults) during the test, unpatched after it."""
    from model_checks import patched_transformers

    with patched_transformers():
        yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback, for the whole session (a remote_servers.MotoServer)."""
    from remote_servers import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch, small_pieces):
    """``(botocore client, bucket)``: a fresh bucket on the moto server, with the AWS
    environment pointing flashtensors at it, and remote reads in 8 KiB pieces."""
    from flashtensors.benchmark.nginx import free_port

    from remote_servers import point_aws_at

    point_aws_at(monkeypatch, s3_server.url)
    from flashtensors.stores.s3 import client

    c = client()
    bucket = f"weights-{free_port()}"
    c.create_bucket(Bucket=bucket)
    s3_server.requests.clear()
    return c, bucket


@pytest.fixture(scope="session")
def async_cudart(tmp_path_factory):
    """The stand-in CUDA runtime that keeps CUDA's asynchrony (support/async_cudart.cpp),
    built once: a path for FLASHTENSORS_CUDART."""
    from helpers import build_library

    return build_library(SUPPORT / "async_cudart.cpp", tmp_path_factory.mktemp("asynccuda") / "libcudart_async.so")
