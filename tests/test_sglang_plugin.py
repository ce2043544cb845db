"""The SGLang plugin itself: declared under ``sglang.srt.plugins``, importing nothing of SGLang
until SGLang calls it, refusing SGLang versions it was not written for with a clear error,
and adding ``flash`` to SGLang's ``--load-format`` choices when SGLang runs its plugins."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from flashtensors.errors import FlashError
from flashtensors.integrations import sglang as adapter

from sglang_models import require_sglang
from vllm_models import engine_env


def test_entry_point_is_declared():
    [ep] = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "flashtensors"]
    assert ep.value == "flashtensors.integrations.sglang:register"


def test_importing_the_adapter_imports_nothing_of_sglang():
    code = ("import sys, flashtensors.integrations.sglang as a; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sglang', 'vllm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=engine_env())
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("version, release", [("0.5.23", (0, 5, 23)), ("0.5.23.post1", (0, 5, 23)),
                                              ("0.6.0rc1", (0, 6, 0)), ("1.0", (1, 0)), ("0.5.9", (0, 5, 9))])
def test_release_numbers(version, release):
    assert adapter._release(version) == release


@pytest.mark.parametrize("version", ["0.5.22", "0.5.9", "0.6.0", "0.6.0rc1", "1.0"])
def test_unsupported_sglang_versions_are_refused_clearly(version):
    with pytest.raises(FlashError, match=rf"supports SGLang 0\.5\.23 up to \(not including\) 0\.6, and SGLang "
                                         rf"{version} is installed"):
        adapter._check_version(version)


@pytest.mark.parametrize("version", ["0.5.23", "0.5.23.post2", "0.5.30"])
def test_supported_versions_pass(version):
    adapter._check_version(version)


def test_sglang_runs_the_plugin_and_its_parser_takes_flash():
    require_sglang()
    code = ("import sglang_shims; sglang_shims.install()\n"
            "from sglang.srt.arg_groups.choices import LOAD_FORMAT_CHOICES\n"
            "assert 'flash' not in LOAD_FORMAT_CHOICES\n"
            "from sglang.srt.plugins import load_plugins; load_plugins()\n"
            "from sglang.srt.server_args import prepare_server_args\n"
            "from sglang.srt.configs.load_config import LoadConfig\n"
            "args = prepare_server_args(['--model-path', '/nowhere', '--load-format', 'flash', '--device', 'cpu'])\n"
            "config = LoadConfig(load_format=args.load_format)\n"
            "print(args.load_format, config.load_format.__module__, config.load_format.__name__)\n"
            "print(LoadConfig(load_format='safetensors').load_format)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=engine_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split("\n")[-3:] == ["flash flashtensors.integrations.sglang.loader FlashModelLoader",
                                           "LoadFormat.SAFETENSORS", ""]
