"""Helpers shared by the tests."""

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file


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


def save_shards(sd: dict[str, torch.Tensor], path, n_shards: int, *, index: bool):
    """Save ``sd`` as Hugging Face-style safetensors shards in ``path``, with or without the index."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    weight_map = {}
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i::n_shards]}
        save_file(part, str(path / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    if index:
        index_json = json.dumps({"metadata": {}, "weight_map": weight_map})
        (path / "model.safetensors.index.json").write_text(index_json)


def flashtensors(*args) -> subprocess.CompletedProcess:
    """Runs the CLI in a fresh process, as a user would (stderr is a pipe: no progress bar)."""
    cmd = [sys.executable, "-m", "flashtensors.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
