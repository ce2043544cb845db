"""Redirected data URLs, as the Hugging Face Hub serves files (a resolve URL 302 to a
signed CDN URL): each URL resolved once per load whatever the pieces and threads, an
expired signature resolved again once, the query-only relative redirect, and 429 or 503
answered by waiting their Retry-After."""

import os

import pytest
import torch

from flashtensors import FlashRemoteError, flash, reading

from helpers import assert_same
from remote_servers import FaultServer, SigningOrigin


def state():
    torch.manual_seed(5)
    return {f"w{i}": torch.randn(256, 128) for i in range(4)}  # 512 KiB


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(reading, "CHUNK_BYTES", 16 << 10)


def read_native(url: str, size: int, threads: int = 4, piece: int = 16 << 10) -> bytes:
    """``size`` bytes of ``url`` read by the native reader in pieces of ``piece``."""
    from flashtensors import _native

    native = _native.module()
    buffer = torch.empty(size, dtype=torch.uint8)
    try:
        native.execute_plan([url], [(0, 0, size, buffer.data_ptr(), -1)], threads, piece, "auto", 10.0,
                            connections=threads)
    finally:
        native.release_idle_connections()  # as a load ends: the redirect targets forgotten too
    return buffer.numpy().tobytes()


@pytest.mark.parametrize("mode", ["cdn", "query"])
def test_a_redirected_url_is_resolved_once_for_all_pieces_and_threads(tmp_path, mode):
    data = os.urandom(1 << 20)
    (tmp_path / "blob.bin").write_bytes(data)
    with SigningOrigin(tmp_path, mode=mode) as server:
        assert read_native(f"{server.url}/blob.bin", len(data)) == data  # 64 pieces, 4 threads
        assert len(server.resolves) == 1
        # The next load resolves again: a signature never outlives its load.
        assert read_native(f"{server.url}/blob.bin", len(data)) == data
        assert len(server.resolves) == 2


def test_an_expired_signature_is_resolved_again_once(tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "blob.bin").write_bytes(data)
    with SigningOrigin(tmp_path, expire_after=20) as server:
        assert read_native(f"{server.url}/blob.bin", len(data)) == data  # 64 pieces: the first signature lasts 20
        assert len(server.resolves) == 2 and server.expired >= 1


def test_a_signature_refused_again_after_resolving_fails_naming_the_url(tmp_path):
    (tmp_path / "blob.bin").write_bytes(os.urandom(1 << 16))
    with SigningOrigin(tmp_path, expire_after=0) as server:  # every signature refused at once
        with pytest.raises(OSError, match=rf"{server.url}/blob.bin: HTTP 403") as e:
            read_native(f"{server.url}/blob.bin", 1 << 16, threads=1)
        assert "X-Amz-Signature" not in str(e.value)
        assert len(server.resolves) == 2  # the first answer, then once again


@pytest.mark.parametrize("mode", ["cdn", "query"])
def test_a_load_behind_signed_redirects_is_exact_and_resolves_each_file_once(tmp_path, small_pieces, mode):
    sd = state()
    flash.save_dict(sd, tmp_path / "m")
    with SigningOrigin(tmp_path, mode=mode) as server:
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=4), sd)
        data_files = [p.name for p in (tmp_path / "m").iterdir() if p.suffix == ".flash"]
        assert len(server.data_resolves(".flash")) == len(data_files)


def test_429_waits_its_retry_after(tmp_path, small_pieces):
    sd = state()
    flash.save_dict(sd, tmp_path / "m")
    with FaultServer(tmp_path) as server:
        server.faults.retry_after = (429, 1)
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=2), sd)
        answers = [a for a in server.faults.answered_at if a[0].endswith(".flash")]
    ((name, start, _, refused_at),) = [a for a in answers if a[2] == 429]
    (again,) = [t for n, s, status, t in answers if (n, s, status) == (name, start, 206)]  # asked again once
    # A lower bound, not a speed claim: the piece was asked for again no sooner than told.
    assert again - refused_at >= 1.0 - 0.05


def test_a_retry_after_past_the_timeout_fails_at_once_saying_so(tmp_path):
    flash.save_dict(state(), tmp_path / "m")
    with FaultServer(tmp_path) as server:
        server.faults.retry_after = (503, 600)
        with pytest.raises(FlashRemoteError, match=r"\.flash: HTTP 503 .*Retry-After of 600 s is past the 5 s timeout"):
            flash.load_dict(f"{server.url}/m", "cpu", timeout=5)


def test_the_python_client_waits_retry_after_too(tmp_path):
    import time

    from flashtensors.stores import http_client as http

    (tmp_path / "x.bin").write_bytes(os.urandom(4096))
    with FaultServer(tmp_path) as server:
        server.faults.retry_after = (429, 1)
        started = time.monotonic()
        assert http.request(f"{server.url}/x.bin", 0, 4095, timeout=10).body == (tmp_path / "x.bin").read_bytes()
        assert time.monotonic() - started >= 1.0 - 0.05  # a lower bound: it waited what was asked
        server.faults.seen.clear()
        server.faults.retry_after = (429, 600)
        with pytest.raises(FlashRemoteError, match="x.bin: HTTP 429 .*Retry-After of 600 s is past the 5 s timeout"):
            http.request(f"{server.url}/x.bin", 0, 4095, timeout=5)
