"""Process bodies for tests/test_concurrency.py. They live in a module of their own so
that spawned processes can import them by name; each reports "ok" or its error. Every
checkpoint is a ``version``: 24 tensors of 256 KiB drawn from a seed."""

import torch

from flashtensors import flash
from flashtensors.loader import load

from helpers import state_dict
from processes import report


def version(seed: int) -> dict:
    return state_dict(seed, n=24)


def load_and_check(path, seed, rounds, queue):
    def body():
        expected = version(seed)
        for io in ["auto", "buffered", "direct"] * rounds:
            out = load(path, "cpu", io=io)
            assert all(torch.equal(out[k], v) for k, v in expected.items())
    report(queue, body)


def save_versions(path, rounds, queue):
    def body():
        for seed in range(rounds):
            flash.save_dict(version(100 + seed), path, overwrite=True)
            flash.verify(path)
    report(queue, body)


def load_either(path, rounds, queue):
    def body():
        versions = [version(seed) for seed in (0, 1)]
        for _ in range(rounds):
            out = flash.load_dict(path)
            assert any(all(torch.equal(out[k], v[k]) for k in v) for v in versions), "a mix of versions"
    report(queue, body)


def overwrite(path, rounds, queue):
    def body():
        for i in range(rounds):
            flash.save_dict(version(i % 2), path, overwrite=True)
    report(queue, body)
