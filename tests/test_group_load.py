"""Collective loads over real gloo process groups of spawned processes: the same tensors
as a plain load, failures raised on every rank. (Each byte read once by the group:
tests/test_load_matrix.py, counted by the server.)"""

import time

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import flash
from flashtensors.benchmark.system import drop_from_cache

import group_workers
from group_workers import run_group
from helpers import state_dict


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    sd = state_dict(0, 12, (1000, 257), name="layers.{i}.w", grow=77)  # about 14 MB: several pieces of the exchange
    sd.update(bias=torch.arange(10, dtype=torch.int16), scalar=torch.tensor(2.5), empty=torch.empty(0, 4))
    sd["tied"] = sd["layers.0.w"]  # shared storage survives the exchange
    flash.save_dict(sd, root / "flash")
    st = dict(sd)
    del st["tied"]
    save_file(st, str(root / "model.safetensors"))
    return {"flash": root / "flash", "safetensors": root / "model.safetensors"}


def _data_files(path) -> list:
    from flashtensors.checkpoint import open_checkpoint

    return open_checkpoint(path).sources


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("kind", ["flash", "safetensors"])
def test_every_rank_gets_the_checkpoint(checkpoints, tmp_path, world, kind):
    # That the group reads each byte once is counted exactly, in nginx's access log
    # (test_load_matrix.py::test_a_group_reads_each_byte_once): a process's read_bytes
    # also counts the library files a load imports or pages in, which a machine short of
    # page cache reads again (this test failed that way, and always after drop_caches).
    path = checkpoints[kind]
    assert drop_from_cache(_data_files(path)), "could not evict the data files from the page cache"
    reports = run_group(group_workers.full_load, world, tmp_path, str(path))
    assert {r: s for r, (s, _) in reports.items()} == {r: "ok" for r in range(world)}
    if kind == "flash":
        facts = reports[0][1]
        assert facts["storages"] == facts["tensors"] - 2  # tied shares; the empty tensor has none


def test_ranks_fill_different_tensors(checkpoints, tmp_path):
    reports = run_group(group_workers.own_tensors, 3, tmp_path, str(checkpoints["flash"]))
    assert {r: s for r, (s, _) in reports.items()} == {0: "ok", 1: "ok", 2: "ok"}


def test_different_checkpoints_are_refused_on_every_rank(checkpoints, tmp_path):
    reports = run_group(group_workers.rank_paths, 2, tmp_path,
                         [str(checkpoints["flash"]), str(checkpoints["safetensors"])])
    assert len(reports) == 2
    assert all("different checkpoints" in status for status, _ in reports.values()), reports


def test_a_rank_that_cannot_open_its_checkpoint_fails_every_rank(checkpoints, tmp_path):
    reports = run_group(group_workers.rank_paths, 3, tmp_path,
                         [str(checkpoints["flash"]), str(tmp_path / "missing"), str(checkpoints["flash"])])
    assert len(reports) == 3
    for status, _ in reports.values():
        assert "GroupError" in status and "failed on rank 1 of 3" in status and "missing" in status, status


def test_a_rank_that_dies_fails_the_others_in_bounded_time(checkpoints, tmp_path):
    started = time.monotonic()
    reports = run_group(group_workers.dies_before_loading, 2, tmp_path, str(checkpoints["flash"]), timeout=120)
    assert set(reports) == {0}
    assert "GroupError" in reports[0][0], reports
    assert time.monotonic() - started < 120
