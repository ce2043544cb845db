"""Saving never damages the checkpoint that was there, and cleans up after failed saves."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from flashtensors import FlashError, flash
from flashtensors.formats.flash import INDEX_FILENAME

from helpers import assert_same


def _entries(path):
    return sorted(p.name for p in path.iterdir())


def test_refuses_to_overwrite_without_permission(ckpt):
    first = {"w": torch.randn(4)}
    flash.save_dict(first, ckpt)
    with pytest.raises(FlashError, match="overwrite=True"):
        flash.save_dict({"w": torch.randn(4)}, ckpt)
    assert_same(flash.load_dict(ckpt), first)
    second = {"v": torch.randn(8)}
    flash.save_dict(second, ckpt, overwrite=True)
    assert_same(flash.load_dict(ckpt), second)
    # The old data files are gone: one index and one data file, nothing else.
    assert len(_entries(ckpt)) == 2


def test_other_files_in_the_directory_are_kept(ckpt):
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    flash.save_dict({"w": torch.randn(2)}, ckpt)
    flash.save_dict({"w": torch.randn(2)}, ckpt, overwrite=True)
    assert (ckpt / "config.json").read_text() == "{}"


def test_failure_halfway_leaves_the_previous_checkpoint(ckpt):
    good = {"w": torch.randn(100)}
    flash.save_dict(good, ckpt)
    before = _entries(ckpt)
    bad = {"a": torch.randn(1000), "b": torch.randn(1000), "c": "not a tensor"}
    with pytest.raises(FlashError, match="'c'"):
        flash.save_dict(bad, ckpt, overwrite=True)
    assert _entries(ckpt) == before
    assert_same(flash.load_dict(ckpt), good)
    flash.verify(ckpt)


def test_bad_values_are_refused_before_writing(ckpt):
    for bad, message in [({"x": torch.empty(2, device="meta")}, "meta"),
                         ({"x": torch.randn(2).to_sparse()}, "dense"),
                         ({1: torch.randn(2)}, "strings"),
                         ([torch.randn(2)], "mapping")]:
        with pytest.raises(FlashError, match=message):
            flash.save_dict(bad, ckpt)
        assert not flash.is_checkpoint(ckpt)


_SAVER = """
import sys, torch
from flashtensors import flash
sd = {f"w{i}": torch.full((256 * 1024,), float(i)) for i in range(40)}
while True:
    flash.save_dict(sd, sys.argv[1], overwrite=True)
"""


@pytest.mark.slow
def test_killed_saves_never_damage_the_checkpoint(ckpt):
    good = {"w": torch.randn(1000)}
    flash.save_dict(good, ckpt)
    survived = 0
    for delay in (0.3, 0.5, 0.8, 1.1, 1.4, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(ckpt)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = flash.load_dict(ckpt)  # whichever complete version is there
        flash.verify(ckpt)
        assert set(loaded) in ({"w"}, {f"w{i}" for i in range(40)})
        survived += 1
    assert survived == 6
    # The next save removes every leftover of the killed ones.
    flash.save_dict(good, ckpt, overwrite=True)
    names = _entries(ckpt)
    assert [n for n in names if n.endswith(".flash")] == [flash.read_index(ckpt).files[0].name]
    assert not [n for n in names if ".tmp-" in n]
    assert INDEX_FILENAME in names
    assert len(names) == 2


def test_a_failure_after_the_index_is_replaced_keeps_the_new_checkpoint(ckpt, monkeypatch):
    import errno

    from flashtensors import writer

    flash.save_dict({"w": torch.randn(4)}, ckpt)
    new = {"v": torch.randn(8)}

    def failing_fsync(path):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(writer, "fsync_dir", failing_fsync)
    with pytest.raises(OSError):
        flash.save_dict(new, ckpt, overwrite=True)
    assert_same(flash.load_dict(ckpt), new)  # committed before the failure: nothing deleted


def test_an_index_this_version_cannot_read_is_left_alone(ckpt):
    import json

    flash.save_dict({"w": torch.randn(4)}, ckpt)
    doc = json.loads((ckpt / INDEX_FILENAME).read_text())
    doc["version"] = 99  # written by a newer flashtensors
    (ckpt / INDEX_FILENAME).write_text(json.dumps(doc))
    before = _entries(ckpt)
    with pytest.raises(FlashError):
        flash.save_dict({"w": "not a tensor"}, ckpt, overwrite=True)
    assert _entries(ckpt) == before


def test_an_abandoned_writer_does_not_block_the_next_save(ckpt):
    import gc
    import threading

    from flashtensors.writer import CheckpointWriter

    w = CheckpointWriter(ckpt)
    w.write({"a": torch.randn(3)})
    del w
    gc.collect()
    done = threading.Event()
    t = threading.Thread(target=lambda: (flash.save_dict({"b": torch.randn(3)}, ckpt), done.set()), daemon=True)
    t.start()
    t.join(timeout=30)
    assert done.is_set(), "the save is still waiting for the abandoned writer's lock"
    assert list(flash.load_dict(ckpt)) == ["b"]
