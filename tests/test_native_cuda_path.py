"""The native core's CUDA path, driven on a CPU-only machine through a stand-in CUDA
runtime (tests/fake_cudart.c: device memory is host memory, copies are memcpy). This
checks the staging pipeline's logic; the real GPU runs in test_cuda.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def fake_cudart(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in CUDA runtime")
    out = tmp_path_factory.mktemp("fakecuda") / "libcudart_fake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(HERE / "fake_cudart.c")], check=True)
    return out


_SCRIPT = r"""
import ctypes, os, sys
from flashtensors import _native
C = _native.module()
fake = ctypes.CDLL(os.environ["FLASHTENSORS_CUDART"])
path, size = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
assert C.cuda_runtime_available() and C.cuda_runtime_path() == os.environ["FLASHTENSORS_CUDART"]
dest = ctypes.create_string_buffer(size)
base = ctypes.addressof(dest)
chunk, threads = 1 << 16, 3
ops = [(0, 0, size // 2, base, 0), (0, size // 2, size - size // 2, base + size // 2, 0)]
for round in range(3):
    ctypes.memset(base, 0, size)
    C.execute_plan([path], ops, threads, chunk, "auto")
    assert dest.raw == data[:size], f"round {round}: bytes differ"
assert fake.fake_host_allocs() == 2 * threads, fake.fake_host_allocs()  # the ring is pinned once
assert C.pinned_bytes() == 2 * threads * chunk
assert fake.fake_copies() == 3 * (-(-size // chunk) + 1)
fake.fake_fail_copies_after(fake.fake_copies() + 5)
try:
    C.execute_plan([path], ops, threads, chunk, "auto")
except RuntimeError as e:
    assert "illegal memory access" in str(e) and "cudaMemcpyAsync" in str(e), e
else:
    raise AssertionError("a failing copy must raise")
fake.fake_fail_copies_after(-1)
third = size // 3 // 4096 * 4096
mixed = [(0, 0, third, base, 0), (0, third, third, base + third, 1),
         (0, 2 * third, size - 2 * third, base + 2 * third, -1)]
ctypes.memset(base, 0, size)
C.execute_plan([path], mixed, threads, chunk, "auto")  # two devices and the host in one plan
assert dest.raw == data[:size]
odd = [(0, 4096, 1000, base, 0), (0, 3 * 4096, 5000, base + 2000, 0)]  # lengths off the block size
ctypes.memset(base, 0, size)
C.execute_plan([path], odd, threads, chunk, "auto")
assert dest.raw[:1000] == data[4096:5096] and dest.raw[1000:2000] == bytes(1000)
assert dest.raw[2000:7000] == data[3 * 4096:3 * 4096 + 5000] and dest.raw[7000:7100] == bytes(100)
try:
    C.execute_plan([path], [(0, 0, size, base, 5)], threads, chunk, "auto")
except RuntimeError as e:
    assert "cudaSetDevice" in str(e), e
else:
    raise AssertionError("a bad device must raise")
C.execute_plan([path], ops, threads, chunk, "auto")  # and the core still works afterwards
assert dest.raw == data[:size]
C.release_pinned()
assert C.pinned_bytes() == 0
print("ok")
"""


def test_staging_pipeline_with_stand_in_runtime(fake_cudart, tmp_path):
    size = (1 << 20) + 4096 * 3
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    env = dict(os.environ, FLASHTENSORS_CUDART=str(fake_cudart))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(path), str(size)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
