"""The native core's CUDA path under a stand-in CUDA runtime that keeps CUDA's
asynchrony (tests/support/async_cudart.cpp, built by conftest's `async_cudart`): streams
run later, on threads of their own, after random delays. Each scenario of
tests/support/async_cuda_driver.py runs ROUNDS times with
different seeds, asserting bit-exact results and no violation of CUDA's rules. The
real GPU runs in test_cuda.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import async_cuda_driver
from async_cuda_driver import SCENARIOS
from helpers import build_library

SUPPORT = Path(async_cuda_driver.__file__).parent
ROUNDS = int(os.environ.get("FLASH_ASYNC_ROUNDS", "24"))
FIRST_SEED = int(os.environ.get("FLASH_ASYNC_FIRST_SEED", "1"))  # failures name their seed


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("asyncdata") / "data.bin"
    path.write_bytes(os.urandom((1 << 20) + 4096 * 3 + 123))
    return path


@pytest.fixture(scope="module")
def torch_like_cuda(tmp_path_factory):
    """As a CUDA build of torch from pip lays it out: libc10_cuda.so linking a hash-renamed
    runtime beside it (libcudart-<hash>.so.12, found through its rpath); and elsewhere a
    decoy, another package's libcudart.so.12. Returns (decoy, torch's CUDA library, runtime)."""
    torch_lib, other = tmp_path_factory.mktemp("torch_lib"), tmp_path_factory.mktemp("other_package")
    runtime = build_library(SUPPORT / "async_cudart.cpp", torch_lib / "libcudart-1a2b3c4d.so.12",
                    "-Wl,-soname,libcudart-1a2b3c4d.so.12")
    decoy = build_library(SUPPORT / "async_cudart.cpp", other / "libcudart.so.12", "-Wl,-soname,libcudart.so.12")
    source = torch_lib / "c10_cuda.cpp"
    source.write_text('extern "C" int cudaGetDevice(int*);\n'
                      'extern "C" int c10_cuda_device() { int d = -1; cudaGetDevice(&d); return d; }\n')
    c10 = build_library(source, torch_lib / "libc10_cuda.so", f"-L{torch_lib}", "-l:libcudart-1a2b3c4d.so.12",
                "-Wl,-rpath,$ORIGIN")
    return decoy, c10, runtime


def drive(runtime, scenario, data_file, rounds=ROUNDS, first_seed=FIRST_SEED, env=None) -> subprocess.CompletedProcess:
    env = env or dict(os.environ, FLASHTENSORS_CUDART=str(runtime))
    return subprocess.run([sys.executable, async_cuda_driver.__file__, scenario, str(data_file),
                           str(rounds), str(first_seed)], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_under_async_runtime(async_cudart, data_file, scenario):
    proc = drive(async_cudart, scenario, data_file)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("scenario", ["devices_and_host", "python_load_dict"])
def test_runtime_found_through_torchs_cuda_library(torch_like_cuda, data_file, scenario):
    """FLASHTENSORS_CUDART unset, another runtime mapped first: the core uses the runtime
    torch's CUDA library links (hash-renamed), reports its path, and never calls the decoy."""
    decoy, c10, runtime = torch_like_cuda
    env = {k: v for k, v in os.environ.items() if k != "FLASHTENSORS_CUDART"}
    env.update(FLASH_ASYNC_PRELOAD=f"{decoy}:{c10}", FLASH_ASYNC_RUNTIME=str(runtime))
    proc = drive(None, scenario, data_file, rounds=4, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "ok"
