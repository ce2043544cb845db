"""Every name the README tells a reader to use exists: dotted ``flashtensors.`` names,
``flash.`` functions, the names its code imports, and the repository files it points at."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ALIASES = {"flash": "flashtensors.flash", "flash_tf": "flashtensors.integrations.transformers"}


def resolve(dotted: str):
    """The object ``dotted`` names: its longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the README names something that is not there
        return obj
    raise ModuleNotFoundError(dotted)


def dotted_names() -> list:
    names = set(re.findall(r"\bflashtensors(?:\.[A-Za-z_]\w*)+", README))
    for alias, module in ALIASES.items():
        names |= {f"{module}.{attr}" for attr in re.findall(rf"(?<![\w./]){alias}\.(?!py\b)([A-Za-z_]\w*)", README)}
    for module, imported in re.findall(r"^from (flashtensors[\w.]*) import ([\w, ]+?)(?:\s+as\s+\w+)?\s*(?:#.*)?$",
                                       README, re.M):
        names |= {f"{module}.{name.strip()}" for name in imported.split(",")}
    return sorted(names)


@pytest.mark.parametrize("name", dotted_names())
def test_every_dotted_name_resolves(name):
    resolve(name)


def test_the_names_found_include_the_api():
    names = dotted_names()
    assert {"flashtensors.flash.load_dict", "flashtensors.flash.verify", "flashtensors.reading.PINNED_RING_BYTES",
            "flashtensors.integrations.vllm.FlashWorkerExtension", "flashtensors.writer"} <= set(names)


@pytest.mark.parametrize("path", sorted(set(re.findall(r"\b((?:flashtensors|docs|examples|benchmarks|integrations|"
                                                       r"tests|csrc|\.ci)/[\w./-]*\w)", README))))
def test_every_file_named_exists(path):
    assert (ROOT / path).exists(), path
