"""``flashtensors convert``, run as a real command on real files, checked by loading the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from flashtensors import flash

from helpers import assert_same, flashtensors, save_shards


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small mixed-dtype state dict."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 16, generator=g),
        "layers.0.attn.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "layers.0.attn.bias": torch.randn(16, generator=g).to(torch.float16),
        "layers.1.mlp.weight": torch.randn(32, 16, generator=g),
        "layers.1.mlp.bias": torch.zeros(0),
        "position_ids": torch.arange(64, dtype=torch.int64),
        "mask": torch.rand(8, generator=g) > 0.5,
        "scale": torch.tensor(3.5),
    }


def other_files(path) -> list[str]:
    """The files in ``path`` besides the flash data files (and hidden files)."""
    return sorted(p.name for p in path.iterdir() if not p.name.endswith(".flash") and p.name[0] != ".")


def assert_converted(result: subprocess.CompletedProcess, n_tensors: int):
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # stderr is not a terminal: no progress bar
    assert result.stdout.startswith(f"converted {n_tensors} tensors")


@pytest.mark.parametrize("index", [True, False], ids=["with-index", "without-index"])
def test_sharded_safetensors_dir_round_trips(tmp_path, index):
    sd = weights()
    save_shards(sd, tmp_path / "src", 3, index=index)

    result = flashtensors("convert", tmp_path / "src", tmp_path / "dst")

    assert_converted(result, len(sd))
    assert_same(flash.load_dict(tmp_path / "dst"), sd, ordered=False)
    assert not list((tmp_path / "dst").glob("*.safetensors"))
    assert not (tmp_path / "dst" / "model.safetensors.index.json").exists()


def test_index_decides_the_shards(tmp_path):
    """With an index, only the files it names are weights: a stray safetensors file is ignored."""
    sd = weights()
    save_shards(sd, tmp_path / "src", 2, index=True)
    save_file({"stray": torch.ones(2)}, tmp_path / "src" / "consolidated.safetensors")

    assert flashtensors("convert", tmp_path / "src", tmp_path / "dst").returncode == 0
    assert sorted(flash.read_index(tmp_path / "dst").tensors) == sorted(sd)


def test_single_safetensors_file_round_trips(tmp_path):
    sd = weights()
    save_file(sd, tmp_path / "model.safetensors")

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst")

    assert_converted(result, len(sd))
    assert_same(flash.load_dict(tmp_path / "dst"), sd, ordered=False)
    assert other_files(tmp_path / "dst") == ["flash_index.json"]


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_pytorch_bin_round_trips_and_keeps_tied_weights(tmp_path, zipfile_format):
    sd = weights()
    sd["lm_head.weight"] = sd["embed.weight"]  # tied, as in many language models
    torch.save(sd, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipfile_format)

    result = flashtensors("convert", tmp_path / "pytorch_model.bin", tmp_path / "dst")

    assert_converted(result, len(sd))
    loaded = flash.load_dict(tmp_path / "dst")
    assert_same(loaded, sd, ordered=False)
    assert loaded["lm_head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()


def test_dir_of_pytorch_shards_with_index(tmp_path):
    sd = weights()
    src = tmp_path / "src"
    src.mkdir()
    names = list(sd)
    weight_map = {}
    for i, part in enumerate((names[:4], names[4:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, src / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save({"not": "weights"}, src / "training_args.bin")  # not a weight file: ignored, not copied

    assert_converted(flashtensors("convert", src, tmp_path / "dst"), len(sd))
    assert_same(flash.load_dict(tmp_path / "dst"), sd, ordered=False)
    assert not list((tmp_path / "dst").glob("*.bin"))


def test_model_dir_copies_the_other_files(tmp_path):
    """A model directory: weights are converted; config, tokenizer and other small files are copied."""
    src = tmp_path / "src"
    sd = weights()
    save_shards(sd, src, 2, index=True)
    torch.save(sd, src / "pytorch_model.bin")  # a second copy of the weights, in another format
    extras = {
        "config.json": '{"model_type": "llama"}',
        "generation_config.json": "{}",
        "tokenizer.json": '{"version": "1.0"}',
        "tokenizer_config.json": "{}",
        "README.md": "# tiny\n",
    }
    for name, text in extras.items():
        (src / name).write_text(text)
    (src / "original").mkdir()  # subdirectories are not copied
    (src / "original" / "params.json").write_text("{}")

    result = flashtensors("convert", src, tmp_path / "dst")

    assert_converted(result, len(sd))
    assert "copied 5 files" in result.stdout and "original" in result.stdout
    dst = tmp_path / "dst"
    for name, text in extras.items():
        assert (dst / name).read_text() == text
    assert other_files(dst) == sorted([*extras, "flash_index.json"])
    assert_same(flash.load_dict(dst), sd, ordered=False)


def test_hugging_face_model_dir(tmp_path):
    """A sharded model saved by transformers converts into a directory transformers reads config from."""
    transformers = pytest.importorskip("transformers")
    from tiny_models import make_model, make_tokenizer

    model = make_model("llama")
    model.save_pretrained(tmp_path / "src", max_shard_size="200KB")
    make_tokenizer().save_pretrained(tmp_path / "src")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    copied = sorted(p.name for p in (tmp_path / "src").iterdir() if not p.name.startswith("model"))

    assert flashtensors("convert", tmp_path / "src", tmp_path / "dst").returncode == 0

    dst = tmp_path / "dst"
    for name in copied:
        assert (dst / name).read_bytes() == (tmp_path / "src" / name).read_bytes(), name
    assert transformers.AutoConfig.from_pretrained(dst).model_type == "llama"
    assert transformers.AutoTokenizer.from_pretrained(dst).decode([7, 8]) == make_tokenizer().decode([7, 8])
    assert_same(flash.load_dict(dst), model.state_dict(), ordered=False)


def test_dtype_casts_floating_tensors_only(tmp_path):
    sd = weights()
    save_file(sd, tmp_path / "model.safetensors")

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst", "--dtype", "bfloat16")

    assert_converted(result, len(sd))
    expected = {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in sd.items()}
    assert_same(flash.load_dict(tmp_path / "dst"), expected, ordered=False)


def test_dtype_cast_keeps_tied_weights_shared(tmp_path):
    sd = {"embed.weight": torch.randn(8, 4)}
    sd["lm_head.weight"] = sd["embed.weight"]
    torch.save(sd, tmp_path / "model.pt")

    result = flashtensors("convert", tmp_path / "model.pt", tmp_path / "dst", "--dtype", "float16")
    assert result.returncode == 0

    loaded = flash.load_dict(tmp_path / "dst")
    assert torch.equal(loaded["lm_head.weight"], sd["embed.weight"].half())
    assert loaded["lm_head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()


def test_overwrite(tmp_path):
    save_file(weights(0), tmp_path / "a.safetensors")
    save_file(weights(1), tmp_path / "b.safetensors")
    assert flashtensors("convert", tmp_path / "a.safetensors", tmp_path / "dst").returncode == 0

    refused = flashtensors("convert", tmp_path / "b.safetensors", tmp_path / "dst")
    assert refused.returncode == 1
    assert "already holds a flash checkpoint; pass --overwrite" in refused.stderr
    assert_same(flash.load_dict(tmp_path / "dst"), weights(0), ordered=False)  # untouched

    result = flashtensors("convert", tmp_path / "b.safetensors", tmp_path / "dst", "--overwrite")
    assert result.returncode == 0
    assert_same(flash.load_dict(tmp_path / "dst"), weights(1), ordered=False)


def test_existing_files_in_dst_are_not_replaced_without_overwrite(tmp_path):
    save_shards(weights(), tmp_path / "src", 1, index=False)
    (tmp_path / "src" / "config.json").write_text('{"new": true}')
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "config.json").write_text('{"old": true}')

    refused = flashtensors("convert", tmp_path / "src", tmp_path / "dst")

    assert refused.returncode == 1
    assert "config.json" in refused.stderr and "--overwrite" in refused.stderr
    assert (tmp_path / "dst" / "config.json").read_text() == '{"old": true}'
    assert not flash.is_checkpoint(tmp_path / "dst")  # refused before writing anything


def test_quiet_prints_nothing(tmp_path):
    save_file(weights(), tmp_path / "model.safetensors")

    result = flashtensors("convert", "--quiet", tmp_path / "model.safetensors", tmp_path / "dst")

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_convert_in_place(tmp_path):
    """SRC == DST adds a flash checkpoint beside the original weights, which stay."""
    sd = weights()
    save_shards(sd, tmp_path / "model", 2, index=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    before = other_files(tmp_path / "model")

    result = flashtensors("convert", tmp_path / "model", tmp_path / "model")

    assert_converted(result, len(sd))
    assert "copied" not in result.stdout
    assert other_files(tmp_path / "model") == sorted([*before, "flash_index.json"])
    assert_same(flash.load_dict(tmp_path / "model"), sd, ordered=False)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_in_bytes_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    save_file(weights(), tmp_path / "model.safetensors")
    size = (tmp_path / "model.safetensors").stat().st_size
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are an 80-column terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        cmd = [sys.executable, "-m", "flashtensors.cli", "convert", str(tmp_path / "model.safetensors")]
        os.execv(sys.executable, [*cmd, str(tmp_path / "dst")])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode()
    total = tqdm.format_sizeof(size)  # the bar counts bytes: "7.80k/7.80k [00:00<00:00, 1.2MB/s]"
    assert "convert: 100%" in text and f"{total}/{total}" in text and "B/s" in text
