"""TLS and proxies for remote checkpoints, with real servers: nginx serving certificates
of a test certificate authority (one for the host asked for, one for another name), and
Debian's tinyproxy as the HTTP proxy (plain requests and CONNECT tunnels), bypassed by
NO_PROXY. The native reader and the Python small-object client are both exercised: a
load reads the index or headers in Python and the tensor bytes natively."""

import json
import os
import subprocess
import sys

import pytest

from flashtensors import FlashRemoteError, flash

from helpers import assert_same, state_dict
from remote_servers import Tinyproxy, issue_cert, make_ca, nginx

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    sd = state_dict(4, 3, (96, 32))
    flash.save_dict(sd, root / "m")
    return root, sd


@pytest.fixture
def no_proxies(monkeypatch):
    """An environment without proxy settings (the tests set their own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _in_child(code: str, env: dict) -> dict:
    """Runs ``code`` in a fresh process (the native reader's OpenSSL context, with its
    trust store, is made once per process); returns what it printed as JSON."""
    clean = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    r = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


LOAD = """
import json, sys
from flashtensors import FlashError, flash
out = {}
for url in sys.argv[1:]:
    try:
        sd = flash.load_dict(url, "cpu", timeout=10)
        out[url] = sum(float(t.double().sum()) for t in sd.values())
    except FlashError as e:
        out[url] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""

NATIVE_READ = """
import json, sys
import numpy as np
from flashtensors import _native
b = np.zeros(8, np.uint8)
try:
    _native.module().execute_plan([sys.argv[1]], [(0, 0, 8, b.ctypes.data, -1)], 1, 1 << 20, "auto", 10.0)
    print(json.dumps({"read": bytes(b).hex()}))
except OSError as e:
    print(json.dumps({"error": str(e)}))
"""


def test_a_certificate_for_another_host_is_refused(site, tmp_path):
    root, sd = site
    ca = make_ca(tmp_path)
    right, wrong = issue_cert(ca, tmp_path, "localhost"), issue_cert(ca, tmp_path, "other.example")
    with nginx(root, tls=right) as good, nginx(root, tls=wrong) as bad:
        good_url, bad_url = f"https://localhost:{good.port}/m", f"https://localhost:{bad.port}/m"
        env = {"SSL_CERT_FILE": str(ca[0])}
        out = _in_child(LOAD.replace("sys.argv[1:]", repr([good_url, bad_url])), env)
        assert out[good_url] == pytest.approx(sum(float(t.double().sum()) for t in sd.values()))
        # The Python client (the index) refuses it, naming the host.
        assert out[bad_url].startswith("FlashRemoteError: ") and "not trusted for localhost" in out[bad_url], out
        # And the native reader, on its own.
        code = NATIVE_READ.replace("sys.argv[1]", repr(f"{bad_url}/flash_index.json"))
        native = _in_child(code, env)
        assert "certificate not trusted: it is not for localhost" in native["error"], native
        # An address is checked against the certificate's addresses (it names none).
        code = NATIVE_READ.replace("sys.argv[1]", repr(f"https://127.0.0.1:{good.port}/m/flash_index.json"))
        native = _in_child(code, env)
        assert "certificate not trusted: it is not for 127.0.0.1" in native["error"], native


def test_loads_through_a_proxy_and_no_proxy_bypasses_it(site, tmp_path, no_proxies, monkeypatch):
    root, sd = site
    with nginx(root) as server, Tinyproxy(tmp_path) as proxy:
        url = f"{server.url}/m"
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, proxy.url)
            before = len(proxy.requests())
            assert_same(flash.load_dict(url, "cpu"), sd)
            through = proxy.requests()[before:]
            assert f"GET {url}/flash_index.json" in through  # the Python client's request
            assert any(r.startswith(f"GET {url}/") and r.endswith(".flash") for r in through)  # the native reader's
            monkeypatch.delenv(name)
        monkeypatch.setenv("http_proxy", proxy.url)
        for no_proxy in ("127.0.0.1", "localhost,127.0.0.1", "*"):
            monkeypatch.setenv("NO_PROXY", no_proxy)
            before = len(proxy.requests())
            assert_same(flash.load_dict(url, "cpu"), sd)
            assert proxy.requests()[before:] == []
        # A proxy that is down: only NO_PROXY makes the load work.
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
        monkeypatch.setenv("no_proxy", ".example.com,127.0.0.1")
        assert_same(flash.load_dict(url, "cpu"), sd)


def test_https_through_a_proxy_tunnel(site, tmp_path):
    root, sd = site
    ca = make_ca(tmp_path)
    with nginx(root, tls=issue_cert(ca, tmp_path, "localhost")) as server, \
            Tinyproxy(tmp_path, connect_ports=[server.port]) as proxy:
        url = f"https://localhost:{server.port}/m"
        for variable in ("https_proxy", "HTTPS_PROXY"):
            before = len(proxy.requests())
            out = _in_child(LOAD.replace("sys.argv[1:]", repr([url])),
                            {"SSL_CERT_FILE": str(ca[0]), variable: proxy.url})
            assert out[url] == pytest.approx(sum(float(t.double().sum()) for t in sd.values())), out
            tunnels = proxy.requests()[before:]
            # One tunnel for the Python client's request, at least one for the native reader.
            assert tunnels.count(f"CONNECT localhost:{server.port}") >= 2, tunnels


def test_an_unusable_proxy_setting_fails_at_once_naming_it(site, no_proxies):
    root, _ = site
    no_proxies.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    with nginx(root) as server, pytest.raises(FlashRemoteError, match="proxy socks5://127.0.0.1:1080: only http://"):
        flash.load_dict(f"{server.url}/m", "cpu", timeout=5)
