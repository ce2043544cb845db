"""A credential for one origin (``_native.authorize_origin``): sent by the native reader
and the Python client to that origin, never to the CDN its redirects lead to (which
refuses a second credential, as presigned URLs do), never shown in an error."""

import pytest
import torch

from flashtensors import FlashRemoteError, _native, flash

from helpers import assert_same
from remote_servers import SigningOrigin

TOKEN = "Bearer hf_test_secret_token"


def state():
    torch.manual_seed(9)
    return {f"w{i}": torch.randn(128, 64) for i in range(3)}


@pytest.fixture
def authorize():
    """authorize_origin, with every origin it was given forgotten afterwards."""
    given = []

    def give(origin, authorization):
        given.append(origin)
        _native.module().authorize_origin(origin, authorization)

    yield give
    for origin in given:
        _native.module().authorize_origin(origin, "")


def test_the_token_goes_to_its_origin_only(tmp_path, authorize):
    sd = state()
    flash.save_dict(sd, tmp_path / "m")
    with SigningOrigin(tmp_path, token=TOKEN) as server:
        authorize(server.url, TOKEN)
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=2), sd)
        assert server.cdn_authorizations == 0 and server.origin_unauthorized == 0
        assert len(server.resolves) >= 2  # the index (Python) and the data (native) went through the origin


def test_without_the_token_the_load_names_the_url_and_status(tmp_path):
    flash.save_dict(state(), tmp_path / "m")
    with SigningOrigin(tmp_path, token=TOKEN) as server:
        with pytest.raises(FlashRemoteError, match=rf"{server.url}/m/flash_index.json: HTTP 401") as e:
            flash.load_dict(f"{server.url}/m", "cpu")
    assert e.value.status == 401


def test_the_native_reader_without_the_token_names_the_url(tmp_path, authorize):
    import os

    (tmp_path / "blob.bin").write_bytes(os.urandom(4096))
    buffer = torch.empty(4096, dtype=torch.uint8)
    native = _native.module()
    with SigningOrigin(tmp_path, token=TOKEN) as server:
        authorize(server.url, "Bearer another")
        with pytest.raises(native.RemoteError, match=rf"{server.url}/blob.bin: HTTP 401") as e:
            native.execute_plan([f"{server.url}/blob.bin"], [(0, 0, 4096, buffer.data_ptr(), -1)], 1, 4096)
        native.release_idle_connections()
    assert e.value.status == 401 and "another" not in str(e.value)


def test_origins_are_matched_exactly(authorize):
    native = _native.module()
    authorize("http://127.0.0.1:8123", TOKEN)
    assert native.origin_authorization("http://127.0.0.1:8123/a/b?c") == TOKEN
    assert native.origin_authorization("HTTP://127.0.0.1:8123/") == TOKEN  # schemes are case-insensitive
    assert native.origin_authorization("not a url") == ""
    for other in ("http://127.0.0.1:8124/a", "https://127.0.0.1:8123/a", "http://localhost:8123/a",
                  "http://127.0.0.1.evil.test:8123/a"):
        assert native.origin_authorization(other) == ""
    authorize("https://Hub.Test", TOKEN)  # the default port, host case
    assert native.origin_authorization("https://hub.test:443/x") == TOKEN
    native.authorize_origin("https://hub.test/", "")
    assert native.origin_authorization("https://hub.test/x") == ""


@pytest.mark.parametrize(("origin", "value", "error"), [
    ("http://h/path", TOKEN, "not an origin"),
    ("ftp://h", TOKEN, "not an http"),
    ("http://h", "Bearer a\r\nX-Injected: 1", "line break"),
])
def test_bad_origins_and_values_are_refused_without_showing_the_value(origin, value, error):
    with pytest.raises(OSError, match=error) as e:
        _native.module().authorize_origin(origin, value)
    assert "Bearer" not in str(e.value)
