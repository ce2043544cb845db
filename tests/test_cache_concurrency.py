"""The cache daemon under concurrent clients, killed clients, a killed daemon, and a
daemon that dies in the middle of a reply."""

import fcntl
import logging
import multiprocessing as mp
import os
import socket
import threading
import time

import pytest

from flashtensors import flash
from flashtensors.daemon import protocol
from flashtensors.daemon.client import DaemonClient
from flashtensors.daemon.protocol import ProtocolError

from cache_helpers import Daemon, load_from_daemon, request_then_die, same_tensors
from helpers import state_dict
from processes import run_spawned

WAIT_S = 240


def test_four_clients_on_the_same_and_different_checkpoints(sock, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    flash.save_dict(state_dict(1), a)
    flash.save_dict(state_dict(2), b)
    work = [[(a, 1)], [(a, 1)], [(b, 2)], [(b, 2), (a, 1)]]
    with Daemon(sock) as d:
        reports, exits = run_spawned([(load_from_daemon, (sock, w, 5)) for w in work], timeout=WAIT_S)
        assert reports == ["ok"] * len(work), exits
        entries = {e["path"]: e for e in d.client.ls()["entries"]}
        assert entries[a]["served"] == 3 * 5 and entries[b]["served"] == 2 * 5
        assert entries[a]["pinned"] == entries[b]["pinned"] == 0
        assert d.log().count("loaded ") == 2


def test_a_killed_client_does_not_wedge_the_daemon_nor_does_a_restart_lose_anything(sock, tmp_path):
    ckpt = str(tmp_path / "m")
    flash.save_dict(state_dict(3, n=16), ckpt)
    ctx = mp.get_context("spawn")
    with Daemon(sock) as d:
        for _ in range(3):
            p = ctx.Process(target=request_then_die, args=(sock, ckpt))
            p.start()
            p.join(WAIT_S)
            assert p.exitcode == -9
        assert same_tensors(d.client.load_tensors(ckpt), state_dict(3, n=16))
        assert d.client.ls()["entries"][0]["pinned"] == 0
        d.proc.kill()  # a crash: the socket file stays behind
        d.proc.wait(30)
    assert os.path.exists(sock)
    assert same_tensors(flash.load_dict(ckpt, server=sock), state_dict(3, n=16))  # direct, no daemon
    with Daemon(sock) as d:  # the restarted daemon replaces the dead one's socket
        assert same_tensors(flash.load_dict(ckpt, server=sock), state_dict(3, n=16))
        assert d.client.ls()["entries"][0]["served"] == 1


class FakeDaemon:
    """A socket that answers every `get` with ``reply`` (raw bytes, plus optional fds) and hangs up,
    as a daemon killed in the middle of a reply would."""

    def __init__(self, path, reply: bytes, fds=()):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(8)
        self.reply, self.fds = reply, list(fds)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                protocol.recv_frame(conn, protocol.MAX_REQUEST_BYTES)
                if self.fds:
                    socket.send_fds(conn, [self.reply[:1]], self.fds)
                    conn.sendall(self.reply[1:])
                else:
                    conn.sendall(self.reply)

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


def _frame(obj) -> bytes:
    import json

    body = json.dumps(obj).encode()
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("case", ["truncated reply", "truncated index", "unsealed memory", "wrong size"])
def test_a_daemon_dying_mid_reply_gives_an_error_or_a_fallback_never_garbage(sock, tmp_path, case, caplog):
    ckpt = str(tmp_path / "m")
    flash.save_dict(state_dict(4), ckpt)
    nbytes = flash.read_index(ckpt).total_bytes
    with open(os.path.join(ckpt, "flash_index.json"), "rb") as f:
        index_bytes = f.read()
    memfd = os.memfd_create("fake", os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, nbytes)  # zeros: garbage if anyone used them
    if case != "unsealed memory":
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    header = {"ok": True, "path": ckpt, "nbytes": nbytes, "tensors": 8, "offsets": [0],
              "index_bytes": len(index_bytes)}
    index_frame = len(index_bytes).to_bytes(4, "big") + index_bytes
    reply = {
        "truncated reply": _frame(header)[:-5],
        "truncated index": _frame(header) + index_frame[:100],
        "unsealed memory": _frame(header) + index_frame,
        "wrong size": _frame({**header, "nbytes": nbytes * 2}) + index_frame,
    }[case]
    fake = FakeDaemon(sock, reply, fds=[memfd])
    try:
        with pytest.raises(ProtocolError):
            DaemonClient(sock, timeout=30).load_tensors(ckpt)
        with caplog.at_level(logging.DEBUG, logger="flashtensors"):
            assert same_tensors(flash.load_dict(ckpt, server=sock), state_dict(4))
        assert "loading directly" in caplog.text
    finally:
        fake.close()
        os.close(memfd)


def test_a_daemon_killed_while_a_client_waits_never_gives_garbage(sock, tmp_path):
    ckpt = str(tmp_path / "m")
    expected = state_dict(6, n=16, shape=(1 << 20,))  # 64 MiB: the daemon is still reading when killed
    flash.save_dict(expected, ckpt)
    results = []
    with Daemon(sock) as d:
        t = threading.Thread(target=lambda: results.append(flash.load_dict(ckpt, server=sock)))
        t.start()
        time.sleep(0.05)  # not a timing assumption: any moment of the kill must be safe
        d.proc.kill()  # before, during or after the daemon's reply
        t.join(WAIT_S)
    assert not t.is_alive() and same_tensors(results[0], expected)
