"""Helpers for tests/test_cache_*.py: start and stop real cache daemons, and process
bodies that spawned client processes import by name. Each body reports "ok" or its error."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile

import torch

from flashtensors import FlashError
from flashtensors.daemon import spawn
from flashtensors.daemon.client import DaemonClient

from helpers import state_dict
from processes import report

START_TIMEOUT_S = 90.0


@contextlib.contextmanager
def socket_dir():
    """A short, fresh 0700 directory for a socket (pytest's tmp paths can pass the
    108-byte limit of Unix socket paths); removed afterwards."""
    d = tempfile.mkdtemp(prefix="ft-cache-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Daemon:
    """A `flashtensors serve` process on ``socket``; its log goes to ``log_path``."""

    def __init__(self, socket: str, memory: str = "1GiB", log_path: str | None = None):
        self.socket = socket
        self.log_path = log_path or socket + ".log"
        self.client = DaemonClient(socket, timeout=60)
        with open(self.log_path, "ab") as log:
            try:
                self.proc = spawn.start(socket, memory, log=log, verbose=True, timeout=START_TIMEOUT_S)
            except FlashError as e:
                raise RuntimeError(f"{e}:\n{self.log()}") from None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        return spawn.stop(self.proc, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def same_tensors(a: dict, b: dict) -> bool:
    """The same names in the same order, and tensors equal in dtype, shape, strides and
    values (a predicate, unlike helpers.assert_same: the daemon's tensors keep their views)."""
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].stride() == b[k].stride()
        and torch.equal(a[k], b[k]) for k in a)


def load_from_daemon(socket, paths_and_seeds, rounds, queue):
    """Loads each (path, seed) ``rounds`` times through the daemon (no fallback) and checks it."""
    def body():
        client = DaemonClient(socket, timeout=120)
        expected = {path: state_dict(seed) for path, seed in paths_and_seeds}
        for _ in range(rounds):
            for path, _seed in paths_and_seeds:
                out = client.load_tensors(path)
                assert same_tensors(out, expected[path]), f"{path}: wrong tensors from the daemon"
    report(queue, body)


def request_then_die(socket, path):
    """Sends a `get` and is killed (SIGKILL) before reading the reply."""
    import socket as sk

    from flashtensors.daemon import protocol

    s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    s.connect(socket)
    protocol.send_frame(s, protocol.request("get", path))
    os.kill(os.getpid(), signal.SIGKILL)
