"""`flashtensors bench` end to end on tiny checkpoints (speed is not asserted, only that
every loader ran, every tensor was checked, and the report is complete)."""

import json

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
