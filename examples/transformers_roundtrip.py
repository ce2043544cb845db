"""Round trip a transformers model through flash weights.

Saves a model with flash weights, loads it back with the ordinary
``AutoModelForCausalLM.from_pretrained`` once flashtensors has patched transformers,
and checks the two models give the same logits.

    python examples/transformers_roundtrip.py                 # a small random Llama, built offline
    python examples/transformers_roundtrip.py /models/qwen2   # any local causal LM directory
                                                              # (its tokenizer too, if it has one)

Needs transformers and accelerate, which ``pip install ".[transformers]"`` adds in the
versions flashtensors supports (plain ``pip install .`` leaves them out).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

try:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
except ImportError as e:
    raise SystemExit(f'transformers_roundtrip.py needs transformers: pip install ".[transformers]" ({e})') from None

import flashtensors
from flashtensors.integrations import transformers as flash_tf


def small_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def tokenizer_of(model_dir: str):
    """The directory's tokenizer, or None for a directory of weights and config alone."""
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):  # transformers' ways of saying there are no tokenizer files
        print(f"no tokenizer in {model_dir}: saving the model without one")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a local Hugging Face model directory (default: a Llama)")
    args = parser.parse_args()

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        tokenizer = tokenizer_of(args.model)
    else:
        model, tokenizer = small_llama(), None

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flash-model"
        flash_tf.save_pretrained(model, out, tokenizer=tokenizer)  # config + flash weights (+ tokenizer)
        print("saved:", ", ".join(sorted(p.name for p in out.iterdir())))

        flashtensors.patch_transformers()  # from_pretrained now reads flash checkpoints
        start = time.perf_counter()
        loaded = AutoModelForCausalLM.from_pretrained(out, device_map="auto")
        print(f"loaded in {time.perf_counter() - start:.2f} s onto {loaded.device}")

        input_ids = torch.randint(0, model.config.vocab_size, (1, 16))
        with torch.no_grad():
            same = torch.equal(model(input_ids).logits, loaded(input_ids.to(loaded.device)).logits.cpu())
        print("identical logits:", same)
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
