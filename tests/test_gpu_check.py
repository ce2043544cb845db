"""benchmarks/gpu_check.sh, as far as it runs without a GPU: its plan fits a lent machine's
limits, and a tree that does not compile stops the first stage at the build, showing the
compiler's error, before any test or benchmark runs, with its scratch space removed."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_plan_fits_the_device_limits():
    proc = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, check=True)
    stages = re.findall(r"^stage (\w+): <= (\d+) s, <= (\d+) GB disk$", proc.stdout, re.M)
    assert len(stages) >= 3, proc.stdout
    assert all(int(seconds) <= 420 for _, seconds, _ in stages), stages
    assert sum(int(disk) for *_, disk in stages) <= 40, stages
    assert "/work/" not in SCRIPT.read_text()  # no path of the development machine


def test_a_failed_build_stops_the_first_stage_with_the_compilers_error(tmp_path):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    if not all(importlib.util.find_spec(m) for m in ("scikit_build_core", "pybind11")):
        pytest.skip("gpu_check.sh builds without isolation: scikit-build-core and pybind11 must be installed")
    tree = tmp_path / "tree"
    tree.mkdir()
    for part in ("CMakeLists.txt", "pyproject.toml", "README.md", "csrc", "flashtensors", "integrations",
                 "benchmarks"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tree / part)
    with open(tree / "csrc" / "crc32c.cpp", "a") as f:
        f.write("int broken( { return 0; }\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_check.sh"), "build"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: the build" in proc.stderr and re.search(r"crc32c\.cpp:\d+:\d+: error:", proc.stderr), proc.stderr
    assert not (out / "tests.log").exists() and not (out / "import.txt").exists()
    scratch = re.search(r"scratch (\S+)", proc.stdout).group(1)
    assert not os.path.exists(scratch), "the stage left its scratch directory"
