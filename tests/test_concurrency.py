"""Several processes loading one checkpoint while another process saves elsewhere."""

import multiprocessing as mp

import torch

from flashtensors import flash


def _state_dict(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {f"layer.{i}": torch.randn(64 * 1024, generator=gen) for i in range(24)}


def _load_and_check(path, seed, rounds, queue):
    try:
        expected = _state_dict(seed)
        for io in ["auto", "buffered", "direct"] * rounds:
            from flashtensors.loader import load

            out = load(path, "cpu", io=io)
            assert all(torch.equal(out[k], v) for k, v in expected.items())
        queue.put("ok")
    except BaseException as e:  # report, do not hang the parent
        queue.put(f"{type(e).__name__}: {e}")


def _save_versions(path, rounds, queue):
    try:
        for seed in range(rounds):
            flash.save_dict(_state_dict(100 + seed), path, overwrite=True)
            flash.verify(path)
        queue.put("ok")
    except BaseException as e:
        queue.put(f"{type(e).__name__}: {e}")


def test_four_loaders_and_a_saver(tmp_path):
    shared, other = tmp_path / "shared", tmp_path / "other"
    flash.save_dict(_state_dict(0), shared)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_and_check, args=(str(shared), 0, 3, queue)) for _ in range(4)]
    procs.append(ctx.Process(target=_save_versions, args=(str(other), 5, queue)))
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 5
    assert torch.equal(flash.load_dict(other)["layer.0"], _state_dict(104)["layer.0"])


def _load_either(path, rounds, queue):
    try:
        versions = [_state_dict(seed) for seed in (0, 1)]
        for _ in range(rounds):
            out = flash.load_dict(path)
            assert any(all(torch.equal(out[k], v[k]) for k in v) for v in versions), "a mix of versions"
        queue.put("ok")
    except BaseException as e:
        queue.put(f"{type(e).__name__}: {e}")


def _overwrite(path, rounds, queue):
    try:
        for i in range(rounds):
            flash.save_dict(_state_dict(i % 2), path, overwrite=True)
        queue.put("ok")
    except BaseException as e:
        queue.put(f"{type(e).__name__}: {e}")


def test_loads_during_overwrites_see_one_whole_version(tmp_path):
    path = tmp_path / "ck"
    flash.save_dict(_state_dict(0), path)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_either, args=(str(path), 15, queue)) for _ in range(3)]
    procs.append(ctx.Process(target=_overwrite, args=(str(path), 15, queue)))
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 4
