"""The native core's CUDA path under a stand-in CUDA runtime that keeps CUDA's
asynchrony (tests/support/async_cudart.cpp, built by conftest's `async_cudart`): streams
run later, on threads of their own, after random delays. Each scenario of
tests/support/async_cuda_driver.py runs ROUNDS times with
different seeds, asserting bit-exact results and no violation of CUDA's rules. The
real GPU runs in test_cuda.py."""

import os
import subprocess
import sys

import pytest

import async_cuda_driver
from async_cuda_driver import SCENARIOS

ROUNDS = int(os.environ.get("FLASH_ASYNC_ROUNDS", "24"))
FIRST_SEED = int(os.environ.get("FLASH_ASYNC_FIRST_SEED", "1"))  # failures name their seed


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("asyncdata") / "data.bin"
    path.write_bytes(os.urandom((1 << 20) + 4096 * 3 + 123))
    return path


def drive(runtime, scenario, data_file, rounds=ROUNDS, first_seed=FIRST_SEED) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLASHTENSORS_CUDART=str(runtime))
    return subprocess.run([sys.executable, async_cuda_driver.__file__, scenario, str(data_file),
                           str(rounds), str(first_seed)], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_under_async_runtime(async_cudart, data_file, scenario):
    proc = drive(async_cudart, scenario, data_file)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "ok"
