"""Process bodies for tests/test_concurrency.py. They live in a module of their own so
that spawned processes can import them by name; each reports "ok" or its error."""

import torch

from flashtensors import flash
from flashtensors.loader import load


def state_dict(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {f"layer.{i}": torch.randn(64 * 1024, generator=gen) for i in range(24)}


def report(queue, body, *args):
    """Runs ``body`` and puts "ok" or its error on ``queue``."""
    try:
        body(*args)
        queue.put("ok")
    except BaseException as e:  # report, never leave the parent waiting
        queue.put(f"{type(e).__name__}: {e}")


def load_and_check(path, seed, rounds, queue):
    def body():
        expected = state_dict(seed)
        for io in ["auto", "buffered", "direct"] * rounds:
            out = load(path, "cpu", io=io)
            assert all(torch.equal(out[k], v) for k, v in expected.items())
    report(queue, body)


def save_versions(path, rounds, queue):
    def body():
        for seed in range(rounds):
            flash.save_dict(state_dict(100 + seed), path, overwrite=True)
            flash.verify(path)
    report(queue, body)


def load_either(path, rounds, queue):
    def body():
        versions = [state_dict(seed) for seed in (0, 1)]
        for _ in range(rounds):
            out = flash.load_dict(path)
            assert any(all(torch.equal(out[k], v[k]) for k in v) for v in versions), "a mix of versions"
    report(queue, body)


def overwrite(path, rounds, queue):
    def body():
        for i in range(rounds):
            flash.save_dict(state_dict(i % 2), path, overwrite=True)
    report(queue, body)
