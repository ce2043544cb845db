"""Bad input to the CLI: a one-line message naming the problem and exit code 1, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import flash
from flashtensors.errors import FlashFormatError

from helpers import flashtensors


def assert_fails(result: subprocess.CompletedProcess, command: str, *fragments: str):
    """Exit code 1 and one line on stderr, ``flashtensors COMMAND: error: ...``, holding each fragment."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"flashtensors {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


class Hostile:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["convert", "info", "verify", "fetch"])
def test_missing_path(tmp_path, command):
    """One message for a location with nothing there, from every command and from the API."""
    nope = tmp_path / "nope" / "model"
    args = [nope, tmp_path / "dst"] if command == "convert" else [nope]
    result = flashtensors(command, *args)
    assert_fails(result, command)
    assert result.stderr == f"flashtensors {command}: error: {nope}: no such file or directory\n"
    for function in (flash.load_dict, flash.read_index, flash.verify):
        with pytest.raises(FlashFormatError) as e:
            function(nope)
        assert str(e.value) == f"{nope}: no such file or directory"


@pytest.mark.parametrize("command", ["convert", "info", "verify"])
def test_a_file_that_is_not_a_checkpoint_is_called_a_file(tmp_path, command):
    (tmp_path / "NOTES.txt").write_text("notes, not weights\n")
    args = [tmp_path / "NOTES.txt"] + ([tmp_path / "dst"] if command == "convert" else [])
    result = flashtensors(command, *args)
    assert_fails(result, command, f"{tmp_path / 'NOTES.txt'}: a file, not a checkpoint; expected ")
    assert "flash_index.json" not in result.stderr
    with pytest.raises(FlashFormatError, match="NOTES.txt: a file, not a checkpoint"):
        flash.load_dict(tmp_path / "NOTES.txt")


@pytest.mark.parametrize("command", ["convert", "info", "verify"])
def test_another_file_renamed_safetensors_is_called_that_with_its_size(tmp_path, command):
    text = b"Some notes that someone saved under the wrong name.\n" * 3
    (tmp_path / "model.safetensors").write_bytes(text)
    args = [tmp_path / "model.safetensors"] + ([tmp_path / "dst"] if command == "convert" else [])
    message = f"{tmp_path / 'model.safetensors'}: not a safetensors file ({len(text)} bytes, "
    result = flashtensors(command, *args)
    assert_fails(result, command, message)
    assert "header of" not in result.stderr
    with pytest.raises(FlashFormatError) as e:
        flash.load_dict(tmp_path / "model.safetensors")
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_not_a_checkpoint(tmp_path, command):
    (tmp_path / "config.json").write_text("{}")
    assert_fails(flashtensors(command, tmp_path), command, str(tmp_path))


def test_hostile_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "payload": Hostile(marker)}, tmp_path / "model.bin")

    result = flashtensors("convert", tmp_path / "model.bin", tmp_path / "dst")

    assert_fails(result, "convert", "model.bin", "refused to unpickle")
    assert not marker.exists()
    assert not (tmp_path / "dst").exists()


def test_hostile_pickle_in_a_model_dir(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "src").mkdir()
    torch.save({"weight": torch.ones(2)}, tmp_path / "src" / "pytorch_model-00001-of-00002.bin")
    torch.save({"payload": Hostile(marker)}, tmp_path / "src" / "pytorch_model-00002-of-00002.bin")

    result = flashtensors("convert", tmp_path / "src", tmp_path / "dst")

    assert_fails(result, "convert", "pytorch_model-00002-of-00002.bin", "refused to unpickle")
    assert not marker.exists()
    assert not flash.is_checkpoint(tmp_path / "dst")  # the first shard's tensors were discarded


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("weights.txt", b"hello", "a file, not a checkpoint"),
        ("model.safetensors", b"\xff" * 100, "not a safetensors file (100 bytes"),
        ("model.bin", b"not a pickle at all", "not a PyTorch checkpoint"),
        ("model.pth", b"\x80\x02garbage", "refused to unpickle"),
        ("model.pt", b"", "not a PyTorch checkpoint"),
    ],
)
def test_unsupported_or_corrupt_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert_fails(flashtensors("convert", tmp_path / name, tmp_path / "dst"), "convert", name, message)


def test_truncated_safetensors_file(tmp_path):
    save_file({"w": torch.randn(100, 100)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst")

    assert_fails(result, "convert", "model.safetensors", "lie beyond the end of the file (tensor 'w')")


@pytest.mark.parametrize(
    "obj, message",
    [
        ([torch.ones(2)], "holds an object of type list, not a state dict"),
        ({"state_dict": {"w": torch.ones(2)}}, "entry 'state_dict' is of type dict, not a tensor"),
        ({"w": torch.ones(2), "step": 3}, "entry 'step' is of type int, not a tensor"),
    ],
)
def test_pytorch_file_that_is_not_a_flat_state_dict(tmp_path, obj, message):
    torch.save(obj, tmp_path / "model.pt")
    result = flashtensors("convert", tmp_path / "model.pt", tmp_path / "dst")
    assert_fails(result, "convert", "model.pt", message)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert_fails(flashtensors("convert", tmp_path, tmp_path / "dst"), "convert", "no weight files")


def test_index_naming_a_missing_shard(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    result = flashtensors("convert", tmp_path, tmp_path / "dst")

    assert_fails(result, "convert", "model.safetensors.index.json", "model-00002-of-00002.safetensors")


@pytest.mark.parametrize(
    "index",
    ["{not json", '{"metadata": {}}', '{"weight_map": {"a": "../elsewhere/model.safetensors"}}'],
    ids=["not-json", "no-weight-map", "path-outside"],
)
def test_malformed_index(tmp_path, index):
    (tmp_path / "elsewhere").mkdir()
    save_file({"a": torch.ones(2)}, tmp_path / "elsewhere" / "model.safetensors")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors.index.json").write_text(index)

    result = flashtensors("convert", tmp_path / "src", tmp_path / "dst")

    assert_fails(result, "convert", "model.safetensors.index.json", "not a valid weight index")


def test_duplicate_tensor_names_across_shards(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "one.safetensors")
    save_file({"a": torch.zeros(2)}, tmp_path / "two.safetensors")

    assert_fails(flashtensors("convert", tmp_path, tmp_path / "dst"), "convert", "'a'")


def test_destination_is_a_file(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model.safetensors")
    (tmp_path / "dst").write_text("")

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst")

    assert_fails(result, "convert", str(tmp_path / "dst"), "not a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst")

    assert_fails(result, "convert", "model.safetensors", "not a regular file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").chmod(0)

    result = flashtensors("convert", tmp_path / "model.safetensors", tmp_path / "dst")

    assert_fails(result, "convert", "model.safetensors")


def test_bad_dtype_is_a_usage_error(tmp_path):
    result = flashtensors("convert", tmp_path, tmp_path / "dst", "--dtype", "int8")
    assert result.returncode == 2  # argparse's usage error
    assert "invalid choice: 'int8'" in result.stderr


@pytest.mark.parametrize("command, args", [("info", ["DIR", "--jsn"]), ("verify", ["DIR", "--thred", "2"]),
                                           ("convert", ["SRC", "DST", "--typ", "bfloat16"]),
                                           ("info", [])])
def test_usage_errors_exit_2_with_the_commands_own_usage(tmp_path, command, args):
    """A mistyped option or a missing argument: the command's usage and the problem, exit code 2."""
    result = flashtensors(command, *[tmp_path if a in ("DIR", "SRC") else a for a in args])
    assert result.returncode == 2
    usage, error = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert usage.startswith(f"usage: flashtensors {command} ")
    assert error.startswith(f"flashtensors {command}: error: ")
    assert ("unrecognized arguments: " + " ".join(a for a in args if a.startswith("--"))) in error or not args


def test_verify_of_safetensors_says_there_is_nothing_to_verify(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model.safetensors")
    result = flashtensors("verify", tmp_path / "model.safetensors")
    assert_fails(result, "verify", "safetensors files carry no checksums, so there is nothing to verify")
    assert "drop verify" not in result.stderr


@pytest.mark.parametrize("command", ["convert", "fetch", "info", "verify"])
def test_help_has_an_example(command):
    result = flashtensors(command, "--help")
    assert result.returncode == 0
    assert f"flashtensors {command} " in result.stdout.split("example", 1)[1]
