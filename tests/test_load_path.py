"""One load path for every caller: convert, load_dict and is_checkpoint choose the same
files, a tuning value reaches every path, the local tier works in a group, and an error
while reading names the tensor being read."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashtensors import flash, reading
from flashtensors.checkpoint import checkpoint_files, holds_flash, open_checkpoint

from helpers import assert_same, flashtensors, save_shards, state_dict
from matrix_workers import run_cases
from remote_servers import nginx, upload


def _sd(seed=0):
    return state_dict(seed, 4, (200, 64), name="w{i}")


def test_convert_and_load_choose_the_same_files(tmp_path):
    """A directory with model.safetensors and another safetensors file (a consolidated
    copy, an adapter): every caller reads model.safetensors alone."""
    src = tmp_path / "src"
    src.mkdir()
    save_file(_sd(0), str(src / "model.safetensors"))
    save_file({"other": torch.ones(3)}, str(src / "consolidated.safetensors"))
    loaded = flash.load_dict(src)
    assert sorted(loaded) == ["w0", "w1", "w2", "w3"]
    result = flashtensors("convert", src, tmp_path / "dst")
    assert result.returncode == 0, result.stderr
    assert_same(flash.load_dict(tmp_path / "dst"), loaded, ordered=False)
    assert checkpoint_files(src) == ("safetensors", [str(src / "model.safetensors")])


def test_is_checkpoint_is_true_for_what_load_dict_loads(tmp_path):
    save_shards(_sd(), tmp_path / "hf", 2, index=True)
    save_file(_sd(), str(tmp_path / "one.safetensors"))
    flash.save_dict(_sd(), tmp_path / "flash")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "hf", tmp_path / "one.safetensors", tmp_path / "flash"):
        assert flash.is_checkpoint(path), path
        flash.load_dict(path)
    assert not flash.is_checkpoint(tmp_path / "empty")
    assert not flash.is_checkpoint(tmp_path / "missing")
    assert holds_flash(tmp_path / "flash") and not holds_flash(tmp_path / "hf")


@pytest.mark.parametrize("method", ["load_dict", "load_into"])
def test_a_tuning_value_set_once_reaches_every_path(tmp_path, monkeypatch, method):
    """reading.CHUNK_BYTES is read when a load runs: every data request of load_dict and
    load_into, counted in nginx's access log, is at most that long."""
    flash.save_dict(_sd(), tmp_path / "www" / "m")
    monkeypatch.setattr(reading, "CHUNK_BYTES", 16 << 10)
    log = tmp_path / "access.log"
    with nginx(tmp_path / "www", access_log=log) as server:
        url = f"{server.url}/m"
        if method == "load_dict":
            flash.load_dict(url)
        else:
            flash.load_into(url, {n: torch.empty(200, 64) for n in _sd()})
    ranges = [line.split()[2] for line in log.read_text().splitlines() if line.split()[1].endswith(".flash")]
    lengths = [int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) + 1 for r in ranges if r != "-"]
    assert lengths and max(lengths) <= 16 << 10, ranges


def test_a_group_fills_the_local_tier_then_reads_from_it(s3_server, s3, tmp_path):
    """group= with cache_dir=: the first collective load writes the copies (one writer on
    the machine), the second reads them and asks S3 for no data."""
    c, bucket = s3
    flash.save_dict(_sd(), tmp_path / "m")
    save_file(_sd(), str(tmp_path / "expected.safetensors"))
    upload(c, bucket, tmp_path / "m", "m")
    w = {"expected_file": str(tmp_path / "expected.safetensors")}
    cases = [{"location": f"s3://{bucket}/m", "method": "load_dict",
              "options": {"cache_dir": str(tmp_path / "tier"), "verify": True}}]
    first = run_cases(tmp_path, w["expected_file"], cases)
    assert all(r[0][0] == "ok" for r in first.values()), first
    copies = [f for _, _, files in os.walk(tmp_path / "tier") for f in files if f.endswith(".flash")]
    assert len(copies) == 1
    s3_server.requests.clear()
    second = run_cases(tmp_path, w["expected_file"], cases)
    assert all(r[0][0] == "ok" for r in second.values()), second
    data = [r for r in s3_server.requests if r[0] == "GET" and r[1].endswith(".flash")]
    assert not data, data
    expected = load_file(w["expected_file"])
    assert_same(flash.load_dict(f"s3://{bucket}/m", cache_dir=tmp_path / "tier"), expected, ordered=False)


def test_a_remote_error_names_the_tensor_being_read(tmp_path):
    """The read step knows the opened checkpoint: a data file vanishing under a server
    gives a FlashRemoteError naming the file and the tensor."""
    from flashtensors import FlashRemoteError

    flash.save_dict(_sd(), tmp_path / "www" / "m")
    with nginx(tmp_path / "www") as server:
        ckpt = open_checkpoint(f"{server.url}/m")
        os.remove(open_checkpoint(tmp_path / "www" / "m").sources[0])
        with pytest.raises(FlashRemoteError, match=r"\.flash.*tensor 'w0'"):
            from flashtensors.loader import load_checkpoint
            from flashtensors.options import LoadOptions

            load_checkpoint(ckpt, "cpu", LoadOptions.resolve(ckpt.location))
