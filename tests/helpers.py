"""Helpers shared by the tests."""

import subprocess
import sys

import torch


def assert_same(loaded: dict, expected: dict):
    """Same names in the same order, and each tensor equal in dtype, shape and bits."""
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert torch.equal(_bits(got.cpu()), _bits(want.cpu())), name


def _bits(t):
    # Compare bit patterns so NaNs and float8 (no equality kernels) compare too.
    t = t.contiguous()
    if t.dtype == torch.bool or t.numel() == 0:
        return t
    return t.reshape(-1).view(torch.uint8)


def flashtensors(*args) -> subprocess.CompletedProcess:
    """Runs the CLI in a fresh process, as a user would (stderr is a pipe: no progress bar)."""
    cmd = [sys.executable, "-m", "flashtensors.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
