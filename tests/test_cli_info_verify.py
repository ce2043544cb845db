"""``flashtensors info`` and ``flashtensors verify``, run as real commands on real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from flashtensors import flash

from helpers import flashtensors

WEIGHTS = {
    "model.embed_tokens.weight": torch.arange(4096, dtype=torch.float32).reshape(256, 16),
    "model.layers.0.self_attn.q_proj.weight": torch.ones(16, 16, dtype=torch.bfloat16),
    "model.layers.0.input_layernorm.weight": torch.full((16,), 0.5, dtype=torch.float16),
    "position_ids": torch.arange(8),
}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    flash.save_dict(WEIGHTS, path, metadata={"source": "unit test"})
    return path


def flip_byte(checkpoint, tensor: str, at: int = 0):
    """Flip every bit of byte ``at`` of ``tensor``'s data, in place in its data file."""
    index = flash.read_index(checkpoint)
    entry = index.tensors[tensor]
    with open(checkpoint / index.files[entry.file].name, "r+b") as f:
        f.seek(entry.offset + at)
        byte = f.read(1)
        f.seek(entry.offset + at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_info_text(checkpoint):
    result = flashtensors("info", checkpoint)

    assert result.returncode == 0, result.stderr
    index = flash.read_index(checkpoint)
    lines = result.stdout.splitlines()
    assert lines[0] == f"flash checkpoint {checkpoint} (format version 1)"
    assert lines[1].startswith("4 tensors, ") and f"({index.total_bytes} bytes) in 1 data file" in lines[1]
    assert f"  {index.files[0].name}  " in result.stdout
    assert "  source: unit test" in lines
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines if line.startswith("  model.")}
    assert rows["model.embed_tokens.weight"] == ["float32", "[256, 16]"]
    assert rows["model.layers.0.self_attn.q_proj.weight"] == ["bfloat16", "[16, 16]"]
    assert rows["model.layers.0.input_layernorm.weight"] == ["float16", "[16]"]


def test_info_json(checkpoint):
    result = flashtensors("info", checkpoint, "--json")

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    index = flash.read_index(checkpoint)
    data_file = index.files[0].name
    assert doc["format_version"] == 1
    assert doc["total_bytes"] == index.total_bytes == sum(f["size"] for f in doc["files"])
    assert doc["files"] == [{"name": data_file, "size": index.files[0].size}]
    assert doc["metadata"] == {"source": "unit test"}
    assert doc["tensors"] == [
        {"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "file": data_file}
        for n, t in WEIGHTS.items()
    ]


def test_verify_ok(checkpoint):
    result = flashtensors("verify", checkpoint)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ok: 4 tensors match their checksums in {checkpoint}\n"


def test_verify_catches_a_flipped_byte(checkpoint):
    flip_byte(checkpoint, "model.layers.0.input_layernorm.weight", at=7)

    result = flashtensors("verify", checkpoint)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("flashtensors verify: error: ")
    assert "'model.layers.0.input_layernorm.weight'" in result.stderr
    assert flash.read_index(checkpoint).files[0].name in result.stderr
    assert "'model.embed_tokens.weight'" not in result.stderr


def test_verify_names_every_corrupt_tensor(checkpoint):
    flip_byte(checkpoint, "model.embed_tokens.weight", at=1000)
    flip_byte(checkpoint, "position_ids")

    result = flashtensors("verify", checkpoint)

    assert result.returncode == 1
    assert "2 tensor(s)" in result.stderr
    assert "'model.embed_tokens.weight'" in result.stderr and "'position_ids'" in result.stderr


def test_verify_catches_a_truncated_data_file(checkpoint):
    data_file = checkpoint / flash.read_index(checkpoint).files[0].name
    data_file.write_bytes(data_file.read_bytes()[:4096])

    result = flashtensors("verify", checkpoint)

    assert result.returncode == 1
    assert "truncated" in result.stderr and data_file.name in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_verify_catches_a_missing_data_file(checkpoint):
    (checkpoint / flash.read_index(checkpoint).files[0].name).unlink()

    result = flashtensors("verify", checkpoint)

    assert result.returncode == 1
    assert "data file missing" in result.stderr


def test_info_and_verify_of_a_converted_model_dir(tmp_path):
    """A model directory converted by the CLI: info sees its tensors, verify passes."""
    from safetensors.torch import save_file

    (tmp_path / "src").mkdir()
    save_file(WEIGHTS, tmp_path / "src" / "model.safetensors")
    (tmp_path / "src" / "config.json").write_text("{}")
    assert flashtensors("convert", tmp_path / "src", tmp_path / "dst").returncode == 0

    info = json.loads(flashtensors("info", tmp_path / "dst", "--json").stdout)
    assert sorted(t["name"] for t in info["tensors"]) == sorted(WEIGHTS)
    assert flashtensors("verify", tmp_path / "dst").returncode == 0
