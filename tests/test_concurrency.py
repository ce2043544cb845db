"""Several processes loading one checkpoint while another process saves."""

import multiprocessing as mp
import queue as queue_module
import time

import torch

from flashtensors import flash

from concurrency_workers import load_and_check, load_either, overwrite, save_versions, state_dict


def _run_all(targets, timeout=300) -> list:
    """Starts each (function, args) in a spawned process; returns what each reported."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, results)) for fn, args in targets]
    for p in procs:
        p.start()
    reports, deadline = [], time.monotonic() + timeout
    while len(reports) < len(procs) and time.monotonic() < deadline:
        try:
            reports.append(results.get(timeout=1))
        except queue_module.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a process died with exit code {dead[0]}"
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    return reports


def test_four_loaders_and_a_saver(tmp_path):
    shared, other = tmp_path / "shared", tmp_path / "other"
    flash.save_dict(state_dict(0), shared)
    reports = _run_all([(load_and_check, (str(shared), 0, 3))] * 4 + [(save_versions, (str(other), 5))])
    assert reports == ["ok"] * 5
    assert torch.equal(flash.load_dict(other)["layer.0"], state_dict(104)["layer.0"])


def test_loads_during_overwrites_see_one_whole_version(tmp_path):
    path = tmp_path / "ck"
    flash.save_dict(state_dict(0), path)
    reports = _run_all([(load_either, (str(path), 15))] * 3 + [(overwrite, (str(path), 15))])
    assert reports == ["ok"] * 4
