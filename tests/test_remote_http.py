"""Remote checkpoints over HTTP(S): a real nginx on loopback for the formats, redirects
and TLS; a fault-injecting server of our own for 5xx, resets, stalls, 403/404 and a
server that ignores ranges."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import FlashChecksumError, FlashError, FlashRemoteError, flash

from helpers import assert_same, mixed_state_dict
from remote_servers import FaultServer, nginx


@pytest.fixture
def site(tmp_path):
    """A web root with a flash checkpoint (m/), a safetensors file (st/model.safetensors)
    and a sharded Hugging Face directory (hf/)."""
    root = tmp_path / "www"
    sd = mixed_state_dict()
    sd["big"] = torch.randn(50_000)
    flash.save_dict(sd, root / "m")
    (root / "st").mkdir()
    save_file(sd, root / "st" / "model.safetensors")
    (root / "hf").mkdir()
    names = list(sd)
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, root / "hf" / shard)
        weight_map.update({k: shard for k in keys})
    (root / "hf" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root, sd


def as_local(root, where, sd):
    """``sd`` in the order a local load of ``root/where`` gives (safetensors files keep
    their own order), checked to be the same tensors."""
    local = flash.load_dict(root / where, "cpu")
    assert sorted(local) == sorted(sd)
    return {k: sd[k] for k in local}


@pytest.mark.parametrize("where", ["m", "st", "hf", "st/model.safetensors"])
def test_nginx_load_dict(site, where, small_pieces):
    root, sd = site
    with nginx(root) as server:
        assert_same(flash.load_dict(f"{server.url}/{where}", "cpu", threads=4), as_local(root, where, sd))


@pytest.mark.parametrize("where", ["m", "hf"])
def test_nginx_load_into(site, where, small_pieces):
    root, sd = site
    targets = {k: torch.zeros_like(v) for k, v in sd.items() if k != "emb"}
    with nginx(root) as server:
        flash.load_into(f"{server.url}/{where}", targets)
    assert_same(targets, {k: v for k, v in sd.items() if k != "emb"})


def test_nginx_read_index_and_verify(site):
    root, sd = site
    with nginx(root) as server:
        assert flash.read_index(f"{server.url}/m").tensors["emb"].shape == (3, 5)
        assert flash.verify(f"{server.url}/m") == len(sd)
        assert flash.load_dict(f"{server.url}/m", verify=True)["emb"].dtype == torch.bfloat16


def test_verify_detects_corruption_remotely(site):
    root, sd = site
    data = next(p for p in (root / "m").iterdir() if p.suffix == ".flash")
    index = flash.read_index(root / "m")
    with open(data, "r+b") as f:
        f.seek(index.tensors["layers.3.weight"].offset + 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with nginx(root) as server, pytest.raises(FlashChecksumError, match="layers.3.weight"):
        flash.verify(f"{server.url}/m")


def test_nginx_redirect(site, small_pieces):
    root, sd = site
    with nginx(root, redirect=True) as server:
        assert_same(flash.load_dict(f"{server.url}/redirect/m", "cpu"), sd)
        assert_same(flash.load_dict(f"{server.url}/redirect/st/model.safetensors", "cpu"),
                    as_local(root, "st", sd))


def test_nginx_missing_checkpoint_names_url(site):
    root, _ = site
    with nginx(root) as server, pytest.raises(FlashRemoteError, match=f"{server.url}/nothing: no checkpoint"):
        flash.load_dict(f"{server.url}/nothing")


def test_nginx_missing_data_file_names_file_and_tensor(site):
    root, _ = site
    data = next(p for p in (root / "m").iterdir() if p.suffix == ".flash")
    data.unlink()
    with nginx(root) as server, pytest.raises(FlashRemoteError, match=rf"{data.name}: data file missing.*tensor") as e:
        flash.load_dict(f"{server.url}/m")
    assert e.value.status == 404


def test_https_with_a_trusted_certificate(site, tmp_path):
    root, sd = site
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with nginx(root, tls=(cert, key)) as server:
        url = f"https://localhost:{server.port}"
        # The native reader's OpenSSL context is made once per process: the trusted and
        # untrusted cases each run in a fresh process.
        code = ("import sys, torch; from flashtensors import flash; "
                f"sd = flash.load_dict({url + '/m'!r}); print(sum(t.numel() for t in sd.values()))")
        env = dict(os.environ, SSL_CERT_FILE=str(cert))
        ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert int(ok.stdout) == sum(t.numel() for t in sd.values())
        code = ("from flashtensors import _native; import numpy as np; b = np.zeros(8, np.uint8); "
                f"_native.module().execute_plan([{url + '/m/flash_index.json'!r}], [(0, 0, 8, b.ctypes.data, -1)], 1, "
                "1 << 20)")
        bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "certificate not trusted" in bad.stderr, bad.stderr


# The fault server: faults per data file, data read in 8 KiB pieces.

def test_5xx_are_retried(site, small_pieces):
    root, sd = site
    with FaultServer(root) as server:
        server.faults.fail_5xx = 3
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=2), sd)
        assert server.faults.requests > 3


def test_reset_mid_body_resumes(site, small_pieces):
    root, sd = site
    with FaultServer(root) as server:
        server.faults.reset_after = 1000
        assert_same(flash.load_dict(f"{server.url}/hf", "cpu", threads=2), as_local(root, "hf", sd))


def test_a_body_cut_several_windows_into_a_piece_resumes(tmp_path):
    # One 6 MiB piece received into fresh memory a 1 MiB window at a time: the server
    # closes 2.5 MiB in, and the retry resumes mid-window with the bytes already there kept.
    sd = {"big": torch.randn(3 << 19), "small": torch.arange(10)}
    flash.save_dict(sd, tmp_path / "m")
    with FaultServer(tmp_path) as server:
        server.faults.close_after = (5 << 19) + 123
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=1, connections=1), sd)
        starts = [start for name, start, _ in server.faults.big_reads if name.endswith(".flash")]
        assert len(starts) == 2 and starts[1] - starts[0] == (5 << 19) + 123  # resumed after what had arrived


def test_redirects_are_followed(site, small_pieces):
    root, sd = site
    with FaultServer(root) as server:
        assert_same(flash.load_dict(f"{server.url}/r/st/model.safetensors", "cpu"), as_local(root, "st", sd))


@pytest.mark.parametrize("status", [403, 404])
def test_forbidden_or_missing_data_fails_naming_url_and_tensor(site, status):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.status_big = status
        with pytest.raises(FlashRemoteError, match=rf"{server.url}/m/.*\.flash: HTTP {status}.*tensor '") as e:
            flash.load_dict(f"{server.url}/m", "cpu")
    assert e.value.status == status
    assert e.value.url.startswith(f"{server.url}/m/")


def test_a_server_that_stops_answering_fails_within_the_timeout(site):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.stall_big = True
        with pytest.raises(FlashRemoteError, match="no data for 1 s"):
            flash.load_dict(f"{server.url}/m", "cpu", timeout=1)


def test_a_server_that_keeps_failing_fails(site):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.fail_5xx = 1000
        with pytest.raises(FlashRemoteError, match="attempts in a row failed; last: HTTP 503 Service Unavailable"):
            flash.load_dict(f"{server.url}/m", "cpu")


def test_a_server_that_ignores_ranges_is_refused(site, small_pieces):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.ignore_range = True
        with pytest.raises(FlashRemoteError, match="ignores Range requests"):
            flash.load_dict(f"{server.url}/st/model.safetensors", "cpu")


def test_nothing_listens(tmp_path):
    from flashtensors.benchmark.nginx import free_port

    url = f"http://127.0.0.1:{free_port()}/m"
    with pytest.raises(FlashRemoteError, match=f"{url}.*(refused|Connection)"):
        flash.load_dict(url, timeout=2)


def test_presigned_style_url_hides_its_query(site):
    root, _ = site
    with FaultServer(root) as server:
        server.faults.status_big = 403
        url = f"{server.url}/st/model.safetensors?X-Amz-Signature=secret"
        with pytest.raises(FlashRemoteError) as e:
            flash.load_dict(url, "cpu")
    assert "secret" not in str(e.value) and "model.safetensors: HTTP 403" in str(e.value)


def test_bad_timeout_is_refused():
    with pytest.raises(FlashError, match="timeout must be more than 0"):
        flash.load_dict("http://127.0.0.1:1/m", timeout=-1)


def test_bench_with_a_loopback_nginx(tmp_path):
    from remote_servers import need_nginx

    need_nginx()
    if shutil.which("curl") is None:
        pytest.skip("the remote benchmark compares with curl, which is not installed")
    from helpers import flashtensors

    out = tmp_path / "bench.json"
    r = flashtensors("bench", "--size", "0.01", "--nginx", "--device", "cpu", "--runs", "1",
                     "--dir", tmp_path / "work", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "streaming reaches" in r.stdout
    result = json.loads(out.read_text())
    assert result["bytes"] > 0 and result["stream_s"] > 0 and result["curl_s"] > 0
