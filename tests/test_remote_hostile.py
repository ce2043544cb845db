"""Remote servers that misbehave: a silent endpoint (S3 and HTTP), empty bodies, a server
that ignores Range in front of a large shard, an object replaced in the middle of a
load. Each must end in a FlashRemoteError within the deadline, without a busy loop,
without a whole shard in memory and without mixing object versions."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from safetensors.torch import save_file

from flashtensors import FlashRemoteError, flash

from helpers import assert_same, state_dict
from remote_servers import FaultServer, SilentServer, nginx

# A bound on how long past `timeout` a failing load may take: generous, for a shared
# machine; a load that multiplies its timeout (botocore's own retries) exceeds it.
SLACK_S = 15


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    sd = state_dict(3, 4, (128, 64))
    flash.save_dict(sd, root / "m")
    (root / "st").mkdir()
    save_file(sd, root / "st" / "model.safetensors")
    return root, sd


def test_a_silent_s3_endpoint_fails_within_the_timeout(monkeypatch, tmp_path):
    pytest.importorskip("botocore")
    with SilentServer() as silent:
        for name, value in {"AWS_ENDPOINT_URL": silent.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY":
                            "test", "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
            monkeypatch.setenv(name, value)
        start = time.monotonic()
        with pytest.raises(FlashRemoteError, match=r"s3://bucket/m/flash_index.json: no answer within 3 s"):
            flash.load_dict("s3://bucket/m", "cpu", timeout=3)
        assert time.monotonic() - start < 3 + SLACK_S


def test_a_silent_http_server_fails_within_the_timeout():
    with SilentServer() as silent:
        start = time.monotonic()
        with pytest.raises(FlashRemoteError, match=r"flash_index.json: no answer within 2 s"):
            flash.load_dict(f"{silent.url}/m", "cpu", timeout=2)
        assert time.monotonic() - start < 2 + SLACK_S


# The load runs in a child process that measures its own CPU time around the load: a
# busy loop would burn about as much CPU as the seconds it waits.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from flashtensors import FlashError, flash
    flash.load_dict(sys.argv[3], "cpu")  # a local load first: what is imported on first use is not counted
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    c0, t0 = cpu(), time.monotonic()
    try:
        flash.load_dict(sys.argv[1], "cpu", timeout=float(sys.argv[2]))
        error = None
    except FlashError as e:
        error = f"{type(e).__name__}: {e}"
    print(json.dumps({"cpu": cpu() - c0, "wall": time.monotonic() - t0, "error": error}))
""")


@pytest.mark.parametrize(("where", "status", "error"), [
    ("m", 200, "FlashRemoteError: .*empty body"),  # the native reader's data reads
    ("m", 206, "FlashRemoteError: .*empty body"),
    ("st/model.safetensors", 206, "FlashRemoteError: .*short body"),  # the Python header probe
    # A 200 of 0 bytes says the whole object is empty: not a safetensors file.
    ("st/model.safetensors", 200, "FlashFormatError: .*not a safetensors file"),
])
def test_empty_bodies_are_retried_with_backoff_then_fail(site, where, status, error):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.empty_body = status
        r = subprocess.run([sys.executable, "-c", CHILD, f"{server.url}/{where}", "4", str(root / "m")],
                           capture_output=True, text=True,
                           timeout=4 + SLACK_S + 30)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        requests = server.faults.requests
    assert out["error"] and re.match(error, out["error"]), out
    assert out["wall"] < 4 + SLACK_S
    # Correctness bounds on a busy loop, not speed: backoff makes about 8 tries per read.
    assert out["cpu"] < 1.0, out
    assert requests < 200, requests


def _big_safetensors(path, mib: int):
    """A safetensors file of one ``mib`` MiB tensor of zeros (sparse on disk)."""
    header = json.dumps({"big": {"dtype": "F32", "shape": [mib << 18], "data_offsets": [0, mib << 20]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + (mib << 20))


def test_a_server_ignoring_range_costs_no_whole_shard(tmp_path):
    import tracemalloc

    (tmp_path / "www").mkdir()
    _big_safetensors(tmp_path / "www" / "model.safetensors", 96)
    with FaultServer(tmp_path / "www") as server:
        server.faults.ignore_range = True
        url = f"{server.url}/model.safetensors"
        tracemalloc.start()
        try:
            index = flash.read_index(url)  # the header probe: the start of the 200 answer, the rest unread
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        time.sleep(0.5)  # the server's last writes fail once the client hung up
        sent = server.faults.bytes_sent
        assert index.tensors["big"].shape == (96 << 18,)
        with pytest.raises(FlashRemoteError, match="model.safetensors: the server ignores Range requests"):
            flash.load_dict(url, "cpu")
    assert peak < 16 << 20, peak
    # What a client that hangs up still receives: its socket buffers, not the object.
    assert sent < 32 << 20, sent


def _replace_with(path, sd):
    """Rewrites the data file ``path`` in place with other tensor bytes of the same size
    (a new version of the object: a new mtime, so a new ETag)."""
    before = os.stat(path)
    save_file(sd, str(path) + ".new")
    os.replace(str(path) + ".new", path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))


@pytest.mark.parametrize("cached", [False, True])
def test_an_object_replaced_mid_load_never_yields_mixed_tensors(tmp_path, small_pieces, cached):
    root = tmp_path / "www"
    root.mkdir()
    old = state_dict(3, 4, (128, 64))
    new = {k: v + 1 for k, v in old.items()}
    save_file(old, root / "model.safetensors")

    def replace(name, count):
        if count == 3:
            _replace_with(root / name, new)

    cache = tmp_path / "cache"
    with FaultServer(root) as server:
        server.faults.after_big_read = replace
        with pytest.raises(FlashRemoteError, match=r"model.safetensors: .*changed") as e:
            flash.load_dict(f"{server.url}/model.safetensors", "cpu", threads=2,
                            cache_dir=cache if cached else False)
        assert e.value.status == 412
        # Afterwards the new version loads whole (the cache committed nothing of the old).
        server.faults.after_big_read = None
        assert_same(flash.load_dict(f"{server.url}/model.safetensors", "cpu", cache_dir=cache if cached else False),
                    new)
    if cached:  # the one copy committed is the new version, whole
        (meta,) = cache.rglob("*.meta.json")
        copy = str(meta)[:-len(".meta.json")]
        assert open(copy, "rb").read() == (root / "model.safetensors").read_bytes()


def test_nginx_refuses_a_replaced_object_to_a_pinned_read(site):
    """nginx's own If-Match: the native reader's pinned read of a replaced file is a 412."""
    import numpy as np

    from flashtensors import _native
    from flashtensors.checkpoint import open_checkpoint

    root, sd = site
    with nginx(root) as server:
        ckpt = open_checkpoint(f"{server.url}/st/model.safetensors", timeout=10)
        assert "#flash-if-match=" in ckpt.sources[0]
        _replace_with(root / "st" / "model.safetensors", {k: v + 1 for k, v in sd.items()})
        buffer = np.zeros(64, np.uint8)
        with pytest.raises(_native.module().RemoteError, match="model.safetensors: the object changed") as e:
            _native.module().execute_plan(ckpt.sources, [(0, 0, 64, buffer.ctypes.data, -1)], 1, 1 << 20)
        assert e.value.status == 412 and "flash-if-match" not in str(e.value)


def test_s3_pins_reads_to_the_version_opened(s3, tmp_path):
    import numpy as np

    from flashtensors import _native
    from flashtensors.checkpoint import open_checkpoint

    c, bucket = s3
    sd = state_dict(3, 4, (128, 64))
    save_file(sd, tmp_path / "model.safetensors")
    c.put_object(Bucket=bucket, Key="p/model.safetensors", Body=(tmp_path / "model.safetensors").read_bytes())
    ckpt = open_checkpoint(f"s3://{bucket}/p", timeout=10)
    save_file({k: v + 1 for k, v in sd.items()}, tmp_path / "model.safetensors")
    c.put_object(Bucket=bucket, Key="p/model.safetensors", Body=(tmp_path / "model.safetensors").read_bytes())
    buffer = np.zeros(64, np.uint8)
    with pytest.raises(_native.module().RemoteError, match="model.safetensors: the object changed"):
        _native.module().execute_plan(ckpt.sources, [(0, 0, 64, buffer.ctypes.data, -1)], 1, 1 << 20)
    with pytest.raises(FlashRemoteError, match=rf"s3://{bucket}/p/model.safetensors: the object changed"):
        ckpt.store.read("model.safetensors", 0, 7)


@pytest.mark.parametrize(("trickle", "error"), [
    ("big", r"FlashRemoteError: .*\.flash: .*(only \d+ bytes for 3 s|attempts in a row failed).*short body"),
    ("all", r"FlashRemoteError: .*flash_index.json: .*short body"),  # the Python client's index read
    ("slow", r"FlashRemoteError: .*\.flash: only \d+ bytes for 3 s.*trickled"),  # a byte every 0.5 s, never closed
])
def test_a_trickling_server_fails_within_the_timeout(site, trickle, error):
    # Each range answered with a 206 promising it whole, then one byte sent and the
    # connection closed (or a byte every 0.5 s): a byte is no useful progress, so backoff
    # grows and the timeout holds.
    root, _ = site
    with FaultServer(root) as server:
        server.faults.trickle = trickle
        r = subprocess.run([sys.executable, "-c", CHILD, f"{server.url}/m", "3", str(root / "m")],
                           capture_output=True, text=True, timeout=3 + SLACK_S + 30)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        requests = server.faults.requests
    assert out["error"] and re.match(error, out["error"]), out
    assert out["wall"] < 3 + SLACK_S
    assert out["cpu"] < 1.0, out  # correctness bounds on a busy loop, not speed
    assert requests < 200, requests
