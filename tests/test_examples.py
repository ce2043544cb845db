"""The examples run as a user runs them, on the inputs their docstrings accept."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_transformers_roundtrip_on_a_model_directory_without_tokenizer_files(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "model")

    result = run_example("transformers_roundtrip.py", tmp_path / "model")

    assert result.returncode == 0, result.stderr
    assert f"no tokenizer in {tmp_path / 'model'}: saving the model without one" in result.stdout
    assert "identical logits: True" in result.stdout
