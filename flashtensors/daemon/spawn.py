"""Starting and stopping a ``flashtensors serve`` child process (for benchmarks and tests).

Example:
    >>> proc = start("/tmp/my-cache/cache.sock", memory=8 << 30)
    >>> sd = flash.load_dict("/models/m", server="/tmp/my-cache/cache.sock")
    >>> stop(proc)
    0
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from ..errors import FlashError
from .client import DaemonClient

START_TIMEOUT_S = 90.0


def start(socket_path: str, memory: int | str, *, log=subprocess.DEVNULL, verbose: bool = False,
          timeout: float = START_TIMEOUT_S) -> subprocess.Popen:
    """Starts a daemon on ``socket_path`` and returns once it answers.

    ``memory``: bytes, or a size such as ``"8GiB"``. ``log``: where its output goes (a
    file object, or subprocess.DEVNULL). Raises FlashError if it exits or does not
    answer within ``timeout`` seconds."""
    cmd = [sys.executable, "-m", "flashtensors.cli", "serve", "--memory", str(memory), "--socket", socket_path]
    proc = subprocess.Popen(cmd + (["-v"] if verbose else []), stdout=log, stderr=subprocess.STDOUT)
    client = DaemonClient(socket_path, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise FlashError(f"the cache daemon exited with code {proc.returncode}")
        with contextlib.suppress(OSError, FlashError):
            if os.path.exists(socket_path) and client.ping()["ok"]:
                return proc
        if time.monotonic() > deadline:
            stop(proc, timeout=0)
            raise FlashError(f"the cache daemon did not answer on {socket_path} within {timeout:.0f} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    return proc.returncode
