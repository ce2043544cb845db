"""The README's Layout names every top-level module and folder of flashtensors/ and every
unit of csrc/, so the map a newcomer reads first cannot fall behind the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Layout", 1)[1].split("```", 2)[1]


def test_every_module_and_folder_of_the_package_is_named():
    layout = _layout()
    package = ROOT / "flashtensors"
    names = [p.name for p in package.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())]
    missing = [n for n in names if not re.search(rf"(?<![\w/]){re.escape(n.removesuffix('.py'))}(\.py|/)", layout)]
    assert names and not missing, missing


def test_every_unit_of_the_core_is_named():
    layout = _layout()
    units = {p.stem for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".h")}
    missing = sorted(u for u in units if not re.search(rf"\b{re.escape(u)}\b", layout))
    assert units and not missing, missing
