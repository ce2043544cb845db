"""Several processes loading one checkpoint while another process saves."""

import torch

from flashtensors import flash

from concurrency_workers import load_and_check, load_either, overwrite, save_versions, version
from processes import run_spawned


def test_four_loaders_and_a_saver(tmp_path):
    shared, other = tmp_path / "shared", tmp_path / "other"
    flash.save_dict(version(0), shared)
    reports, exits = run_spawned([(load_and_check, (str(shared), 0, 3))] * 4 + [(save_versions, (str(other), 5))],
                                 timeout=300)
    assert reports == ["ok"] * 5, exits
    assert torch.equal(flash.load_dict(other)["layer.0"], version(104)["layer.0"])


def test_loads_during_overwrites_see_one_whole_version(tmp_path):
    path = tmp_path / "ck"
    flash.save_dict(version(0), path)
    reports, exits = run_spawned([(load_either, (str(path), 15))] * 3 + [(overwrite, (str(path), 15))], timeout=300)
    assert reports == ["ok"] * 4, exits
