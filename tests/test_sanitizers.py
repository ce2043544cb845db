"""The native core built with AddressSanitizer and UBSan, under the round-trip, corruption,
native and fuzz suites. Any memory error or undefined behaviour aborts the run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_native.py", "tests/test_cuda_path_async.py", "tests/test_roundtrip.py",
          "tests/test_corrupt.py", "tests/test_fuzz.py"]


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else ""


@pytest.mark.slow
def test_suites_run_clean_under_asan_and_ubsan(tmp_path):
    if not (shutil.which("cmake") and shutil.which("gcc")):
        pytest.skip("needs cmake and gcc")
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if not (asan and ubsan):
        pytest.skip("gcc's libasan/libubsan are not installed")
    pybind11 = pytest.importorskip("pybind11")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DFLASH_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, capture_output=True)
    (module,) = build.glob("_C*.so")
    env = dict(os.environ, FLASHTENSORS_NATIVE=str(module), LD_PRELOAD=f"{asan}:{ubsan}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               FLASH_FUZZ_EXAMPLES="150")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr
