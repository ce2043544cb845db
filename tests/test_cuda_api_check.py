"""The build-time check of csrc/cuda_api.h against the installed CUDA headers
(csrc/cuda_api_check.cpp): it passes on the declarations as they are, fails on each kind
of mismatch it exists for, and the build runs it only where the headers are.

Needs the source tree, a C++ compiler and CUDA's headers (not a GPU); CI sets
FLASHTENSORS_REQUIRE_CUDA_HEADERS=1, so there the tests run instead of skipping.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1]
CSRC = SOURCE / "csrc"
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def cuda_include():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", "/opt/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


INCLUDE = cuda_include()
if INCLUDE is None or CXX is None or not (CSRC / "cuda_api_check.cpp").is_file():
    if os.environ.get("FLASHTENSORS_REQUIRE_CUDA_HEADERS") == "1":
        raise RuntimeError(f"FLASHTENSORS_REQUIRE_CUDA_HEADERS=1 but the check cannot run here: CUDA headers "
                           f"{INCLUDE}, compiler {CXX}, source tree {SOURCE}")
    pytest.skip("needs CUDA's headers, a C++ compiler and the source tree", allow_module_level=True)


def compile_check(header_text: str, tmp_path) -> subprocess.CompletedProcess:
    """Compiles the check against ``header_text`` as cuda_api.h (the check includes it
    from its own directory, so both are copied side by side)."""
    shutil.copy(CSRC / "cuda_api_check.cpp", tmp_path / "cuda_api_check.cpp")
    (tmp_path / "cuda_api.h").write_text(header_text)
    return subprocess.run([CXX, "-std=c++17", "-fsyntax-only", f"-I{INCLUDE}", str(tmp_path / "cuda_api_check.cpp")],
                          capture_output=True, text=True, timeout=300)


HEADER = (CSRC / "cuda_api.h").read_text()


def test_the_declarations_match_the_installed_headers(tmp_path):
    done = compile_check(HEADER, tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("wrong, right, message", [
    ("int (*SetDevice)(int);", "int (*SetDevice)(unsigned);", "CudaApi::SetDevice does not match cudaSetDevice"),
    ("int (*MemcpyAsync)(void*, const void*, size_t, int, cudaStream);",
     "int (*MemcpyAsync)(void*, const void*, int, int, cudaStream);", "CudaApi::MemcpyAsync does not match"),
    ("const char* (*GetErrorString)(int);", "char* (*GetErrorString)(int);", "CudaApi::GetErrorString does not"),
    ("constexpr int kMemcpyHostToDevice = 1;", "constexpr int kMemcpyHostToDevice = 2;",
     "kMemcpyHostToDevice != cudaMemcpyHostToDevice"),
    ("constexpr unsigned kEventDisableTiming = 2;", "constexpr unsigned kEventDisableTiming = 1;",
     "kEventDisableTiming != cudaEventDisableTiming"),
    ("int (*GetLastError)();", "int (*GetLastError)();\n  int (*DeviceReset)();", "CudaApi gained or lost a slot"),
], ids=["argument", "size_t", "return", "memcpy-kind", "event-flag", "unchecked-slot"])
def test_a_mismatch_fails_the_check(tmp_path, wrong, right, message):
    assert wrong in HEADER
    done = compile_check(HEADER.replace(wrong, right), tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def configure(tmp_path, *defines) -> subprocess.CompletedProcess:
    """CMake's configure step of the real CMakeLists.txt, headers hidden from it."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("needs cmake")
    import pybind11

    hidden = ";".join(str(p) for p in {INCLUDE, INCLUDE.resolve()})
    return subprocess.run(
        [cmake, "-S", str(SOURCE), "-B", str(tmp_path / "build"), "-G", "Ninja" if shutil.which("ninja") else
         "Unix Makefiles", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
         f"-DCMAKE_IGNORE_PATH={hidden}", *defines],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_HOME": "", "CUDA_PATH": ""})


def test_a_build_without_the_headers_skips_the_check(tmp_path):
    done = configure(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "CUDA headers not found: csrc/cuda_api.h is not checked" in done.stdout


def test_a_build_that_requires_the_check_fails_without_the_headers(tmp_path):
    done = configure(tmp_path, "-DFLASH_REQUIRE_CUDA_API_CHECK=ON")
    assert done.returncode != 0
    assert re.search(r"FLASH_REQUIRE_CUDA_API_CHECK is set but\s+cuda_runtime_api.h was not found", done.stderr)
