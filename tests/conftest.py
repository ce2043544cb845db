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


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback, for the whole session (a remote_servers.MotoServer)."""
    from remote_servers import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """``(botocore client, bucket)``: a fresh bucket on the moto server, with the AWS
    environment pointing flashtensors at it, and remote reads in 8 KiB pieces."""
    from flashtensors import reading
    from flashtensors.benchmark.nginx import free_port

    from remote_servers import point_aws_at

    point_aws_at(monkeypatch, s3_server.url)
    monkeypatch.setattr(reading, "CHUNK_BYTES", 8 << 10)
    from flashtensors.stores.s3 import client

    c = client()
    bucket = f"weights-{free_port()}"
    c.create_bucket(Bucket=bucket)
    s3_server.requests.clear()
    return c, bucket
