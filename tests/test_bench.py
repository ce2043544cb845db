"""`flashtensors bench` end to end on tiny checkpoints (speed is not asserted, only that
every loader ran, every tensor was checked, and the report is complete)."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

from flashtensors import flash

from helpers import flashtensors


def _report(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    result = flashtensors("bench", *args, "--device", "cpu", "--runs", "2", "--dir", tmp_path / "work",
                          "--loaders", "flashtensors,flashtensors (safetensors),safetensors load_file", "--json", out)
    assert result.returncode == 0, result.stderr
    assert "flashtensors" in result.stdout and "vs safetensors" in result.stdout
    return json.loads(out.read_text())


def _check(doc: dict, tensors: int):
    assert doc["tensors"] == tensors and doc["device"] == "cpu"
    rows = {(r["loader"], r["mode"]): r for r in doc["results"]}
    loaders = ("flashtensors", "flashtensors (safetensors)", "safetensors load_file")
    assert set(rows) == {(n, m) for n in loaders for m in ("warm", "cold")}
    for r in rows.values():
        assert r["error"] == "" and len(r["seconds"]) == 2 and r["GBps"] > 0


def test_synthetic_checkpoint(tmp_path):
    _check(_report(tmp_path, "--size", "0.02", "--in-process"), tensors=13)


def test_path_to_a_safetensors_file_and_to_a_flash_checkpoint(tmp_path):
    sd = {"a": torch.randn(1000, 10), "b": torch.arange(100, dtype=torch.int64)}
    save_file(sd, str(tmp_path / "model.safetensors"))
    _check(_report(tmp_path, "--path", tmp_path / "model.safetensors", "--in-process"), tensors=2)
    flash.save_dict(sd, tmp_path / "flash")
    _check(_report(tmp_path, "--path", tmp_path / "flash", "--in-process"), tensors=2)


def test_many_tensors_in_fresh_processes(tmp_path):
    doc = _report(tmp_path, "--tensors", "300", "--tensor-kb", "4")
    assert doc["fresh_process"] is True
    _check(doc, tensors=300)


def test_leaves_nothing_behind_unless_kept(tmp_path):
    """Without --dir the checkpoints go to a temporary directory, removed at the end; --keep
    keeps it and says where."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    args = ["bench", "--size", "0.01", "--device", "cpu", "--runs", "1", "--no-cold", "--in-process",
            "--loaders", "flashtensors"]
    cmd = [sys.executable, "-m", "flashtensors.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []

    result = subprocess.run(cmd + ["--keep"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    [kept] = tmp_path.iterdir()
    assert f"kept the checkpoints in {kept}" in result.stderr
    assert flash.is_checkpoint(next(kept.iterdir()) / "flash")


def test_device_in_cli_terms(tmp_path):
    """The error names the option as typed, not the device_map it becomes."""
    result = flashtensors("bench", "--size", "0.01", "--device", "cuda:99", "--dir", tmp_path)
    assert result.returncode == 1
    want = "but CUDA is not available on this machine" if not torch.cuda.is_available() else "but this machine has"
    assert result.stderr.startswith("flashtensors bench: error: --device cuda:99, " + want), result.stderr
    assert "device_map" not in result.stderr
