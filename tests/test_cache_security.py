"""The cache daemon's defences: malformed requests, sockets open to other users, peers of
other users; and the fallback to direct loads when no daemon can be used."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from flashtensors import FlashFormatError, flash
from flashtensors.daemon import paths, protocol
from flashtensors.daemon.client import DaemonClient
from flashtensors.daemon.paths import UnsafeSocketError

from cache_helpers import same_tensors, socket_dir
from helpers import state_dict


def _raw(sock_path, data: bytes) -> dict:
    """Sends raw bytes; returns the daemon's reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(sock_path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply, _ = protocol.recv_frame(s, protocol.MAX_REPLY_BYTES)
        return reply


def _frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return len(body).to_bytes(4, "big") + body


MALFORMED = {
    "not json": b"\x00\x00\x00\x05hello",
    "oversized": (1 << 30).to_bytes(4, "big") + b"{}",
    "truncated": b"\x00\x00\x01\x00{\"v\":1",
    "a list": _frame([1, 2]),
    "unknown op": _frame({"v": 1, "op": "rm", "path": "/"}),
    "old version": _frame({"v": 0, "op": "ping"}),
    "relative path": _frame({"v": 1, "op": "get", "path": "models/m"}),
    "NUL in path": _frame({"v": 1, "op": "get", "path": "/models\u0000/m"}),
    "long path": _frame({"v": 1, "op": "get", "path": "/" + "a" * 5000}),
    "path not a string": _frame({"v": 1, "op": "get", "path": ["/"]}),
    "extra field": _frame({"v": 1, "op": "ping", "fd": 3}),
    "not a checkpoint": _frame({"v": 1, "op": "get", "path": "/"}),
}


def test_malformed_requests_are_refused_and_the_daemon_carries_on(daemon, tmp_path):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    for name, data in MALFORMED.items():
        reply = _raw(daemon.socket, data)
        assert reply["ok"] is False and reply["error"], name
    assert "malformed request" in _raw(daemon.socket, MALFORMED["oversized"])["error"]
    assert "no flash checkpoint" in _raw(daemon.socket, MALFORMED["not a checkpoint"])["error"]
    assert same_tensors(daemon.client.load_tensors(ckpt), state_dict(1))
    # Every request but "not a checkpoint" was malformed, and "oversized" was sent twice.
    assert daemon.log().count("refused a malformed request") == len(MALFORMED)


@pytest.mark.parametrize("what", ["directory", "socket"])
def test_a_socket_open_to_other_users_is_refused(daemon, tmp_path, what, caplog):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    target = os.path.dirname(daemon.socket) if what == "directory" else daemon.socket
    mode = os.stat(target).st_mode & 0o777
    os.chmod(target, 0o755 if what == "directory" else 0o666)
    try:
        with pytest.raises(UnsafeSocketError, match="open to other users"):
            daemon.client.ping()
        with caplog.at_level(logging.WARNING, logger="flashtensors"):
            assert same_tensors(flash.load_dict(ckpt, server=daemon.socket), state_dict(1))
        assert "not using the cache daemon" in caplog.text
    finally:
        os.chmod(target, mode)
    assert daemon.client.ls()["entries"] == []  # the load above was direct
    assert daemon.client.ping()["ok"]


def test_the_daemon_refuses_a_socket_directory_open_to_others(tmp_path):
    with socket_dir() as d:
        open_dir = os.path.join(d, "shared")
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o755)
        r = subprocess.run([sys.executable, "-m", "flashtensors.cli", "serve", "--memory", "1MiB",
                            "--socket", os.path.join(open_dir, "cache.sock")],
                           check=False, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "must be 0700" in r.stderr
        assert not os.path.exists(os.path.join(open_dir, "cache.sock"))


def test_a_second_daemon_on_the_same_socket_is_refused(daemon):
    r = subprocess.run([sys.executable, "-m", "flashtensors.cli", "serve", "--memory", "1MiB",
                        "--socket", daemon.socket], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "already serving" in r.stderr
    assert daemon.client.ping()["ok"]


def _as_user(uid: int, body) -> bytes:
    """Runs ``body()`` (returning bytes) in a forked child that dropped to ``uid``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no threads, no torch; report and leave at once
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = body()
        except BaseException as e:  # noqa: BLE001 (the parent reads what went wrong)
            out = repr(e).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
def test_a_peer_of_another_user_is_refused(daemon, tmp_path):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    # Open the socket up (as a misconfiguration would) so that `nobody` can connect at all:
    # the daemon's peer-credential check must still refuse it.
    os.chmod(os.path.dirname(daemon.socket), 0o711)
    os.chmod(daemon.socket, 0o666)

    def ask():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(daemon.socket)
            try:
                s.sendall(_frame({"v": 1, "op": "get", "path": str(ckpt)}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before the request was read; the refusal is queued
            return b"".join(iter(lambda: s.recv(65536), b""))

    out = _as_user(65534, ask)
    reply = json.loads(out[4:]) if out[:1] == b"\x00" else out
    assert isinstance(reply, dict) and reply["ok"] is False and "refused" in reply["error"], out
    assert "is not this daemon's user" in daemon.log()
    os.chmod(os.path.dirname(daemon.socket), 0o700)
    os.chmod(daemon.socket, 0o600)
    assert daemon.client.ls()["entries"] == []


def test_without_a_daemon_loads_are_direct(sock, tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    assert same_tensors(flash.load_dict(ckpt, server=sock), state_dict(1))  # nothing there
    monkeypatch.setenv("FLASHTENSORS_SERVER", sock)
    assert same_tensors(flash.load_dict(ckpt), state_dict(1))
    # A socket file nobody listens on (a daemon that died) is a debug message, not an error.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock)
    os.chmod(sock, 0o600)
    dead.close()
    with caplog.at_level(logging.DEBUG, logger="flashtensors"):
        assert same_tensors(flash.load_dict(ckpt), state_dict(1))
    assert "loading directly" in caplog.text
    # Errors are the direct loader's own.
    with pytest.raises(FlashFormatError, match="no such file or directory"):
        flash.load_dict(tmp_path / "absent")


def test_flashtensors_server_off_and_the_default_socket(daemon, tmp_path, monkeypatch):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    monkeypatch.setenv("FLASHTENSORS_SERVER", "off")
    assert paths.resolve_server() is None
    assert same_tensors(flash.load_dict(ckpt), state_dict(1))
    assert daemon.client.ls()["entries"] == []
    monkeypatch.delenv("FLASHTENSORS_SERVER")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert paths.resolve_server() == "/run/user/4242/flashtensors/cache.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.resolve_server() == f"/tmp/flashtensors-{os.getuid()}/cache.sock"
    assert paths.resolve_server(daemon.socket) == daemon.socket
    assert paths.resolve_server(False) is None
    assert DaemonClient(daemon.socket).ping()["pid"] == daemon.proc.pid


def test_import_flashtensors_stays_light():
    code = "import sys, flashtensors; print(sorted(m for m in sys.modules if m.startswith('flashtensors.daemon')))"
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stderr
