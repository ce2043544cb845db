"""Helpers shared by the tests: the state dicts they save, the one comparison of loaded
tensors with what was saved, Hugging Face-style shards, and the CLI run as a user runs it."""

import json
import shutil
import subprocess
import sys

import torch
from safetensors.torch import save_file


def state_dict(seed: int = 0, n: int = 8, shape: tuple = (64 << 10,), *, name: str = "layer.{i}",
               grow: int = 0) -> dict[str, torch.Tensor]:
    """``n`` float32 tensors of random values drawn from ``seed`` (the same seed, the same
    tensors), named ``name.format(i=i)``. Tensor ``i`` has ``shape`` with its first dimension
    grown by ``grow * i``: with ``grow``, tensors read in each other's place differ in shape.

        state_dict(3, 4, (32, 16), name="model.layers.{i}.w", grow=1)  # 32x16, 33x16, 34x16, 35x16
    """
    gen = torch.Generator().manual_seed(seed)
    first, *rest = shape
    return {name.format(i=i): torch.randn(first + grow * i, *rest, generator=gen) for i in range(n)}


def mixed_state_dict(seed: int = 0, n: int = 6) -> dict[str, torch.Tensor]:
    """A small checkpoint of three dtypes: ``n`` float32 ``layers.{i}.weight`` of different
    shapes, an int16 ``layers.0.bias`` and a bfloat16 ``emb``."""
    sd = state_dict(seed, n, (64, 48), name="layers.{i}.weight", grow=1)
    sd["layers.0.bias"] = torch.arange(17, dtype=torch.int16)
    sd["emb"] = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    return sd


def assert_same(loaded: dict, expected: dict, *, ordered: bool = True):
    """The same names (in the same order, unless not ``ordered``), and each tensor equal in
    dtype, shape and bits."""
    in_order = list if ordered else sorted
    assert in_order(loaded) == in_order(expected), (
        f"missing {sorted(set(expected) - set(loaded))}, unexpected {sorted(set(loaded) - set(expected))}"
        + (", or in another order" if ordered else ""))
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


def build_library(source, out, *flags: str):
    """Compiles ``source`` (C++17) into the shared library ``out`` with the system compiler,
    ``flags`` last; skips the test where there is no compiler. Returns ``out``."""
    import pytest

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler to build a test library")
    subprocess.run([cxx, "-std=c++17", "-shared", "-fPIC", "-O2", "-pthread", "-o", str(out), str(source), *flags],
                   check=True)
    return out
