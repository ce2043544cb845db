"""Tiny Hugging Face models and a tokenizer, built offline for tests.

Nothing is downloaded: each model is built from a small config with seeded random
weights, and the tokenizer is a byte-level vocabulary made with ``tokenizers``.
The shapes suit vLLM's CPU engine (head size 32, short context), and the model's
``vocab_size`` always equals the tokenizer's.

Example::

    from tiny_models import make_model_dir, make_model

    path = make_model_dir("llama", tmp_path / "llama")        # config + safetensors + tokenizer
    model = make_model("gpt2", n_layer=1)                      # in memory only

Architectures: see ``ARCHS`` (``"qwen3"`` is present when transformers has it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", "<mask>")
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials, then one token per byte
MAX_POSITIONS = 512

# Shared shapes: hidden 128 with 4 heads gives head size 32, the smallest vLLM CPU supports.
_LAYERS = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_POSITIONS,
    pad_token_id=1,
)
_DECODER = dict(_LAYERS, num_key_value_heads=2, bos_token_id=2, eos_token_id=3)


def _archs() -> dict[str, tuple[str, str, dict]]:
    """arch -> (config class name, model class name, default config kwargs)."""
    import transformers

    archs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_DECODER)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_DECODER)),
        "gpt2": (
            "GPT2Config",
            "GPT2LMHeadModel",
            dict(
                vocab_size=VOCAB_SIZE,
                n_embd=128,
                n_layer=2,
                n_head=4,
                n_positions=MAX_POSITIONS,
                tie_word_embeddings=True,
                bos_token_id=2,
                eos_token_id=3,
                pad_token_id=1,
            ),
        ),
        "bert": ("BertConfig", "BertModel", dict(_LAYERS)),
    }
    if hasattr(transformers, "Qwen3ForCausalLM"):
        archs["qwen3"] = ("Qwen3Config", "Qwen3ForCausalLM", dict(_DECODER, head_dim=32))
    return archs


ARCHS: tuple[str, ...] = tuple(_archs())


def make_config(arch: str, **overrides):
    """A small transformers config for ``arch``; ``overrides`` replace config fields.

    Example: ``make_config("llama", num_hidden_layers=1)``.
    """
    import transformers

    archs = _archs()
    if arch not in archs:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(archs)}")
    config_cls, _, defaults = archs[arch]
    return getattr(transformers, config_cls)(**{**defaults, **overrides})


def make_model(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny model of ``arch`` with seeded random weights, in eval mode.

    Example: ``make_model("qwen2", dtype=torch.bfloat16)``.
    """
    import transformers

    config = make_config(arch, **overrides)
    model_cls = getattr(transformers, _archs()[arch][1])
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype).eval()
    model.config.dtype = dtype
    return model


def make_tokenizer():
    """A byte-level tokenizer: ``<unk> <pad> <s> </s> <mask>`` (ids 0-4), then one token per byte.

    It has no merges, so any text round-trips and every loader agrees on it
    (``AutoTokenizer`` in transformers 5 rebuilds Qwen2 tokenizers as byte-level
    BPE from vocab and merges, which would garble a WordLevel vocabulary). It adds
    no special tokens when encoding. Example::

        tok = make_tokenizer()
        tok.decode(tok("hello")["input_ids"])   # "hello"
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIAL_TOKENS) + sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        mask_token="<mask>",
        model_max_length=MAX_POSITIONS,
    )


def make_model_dir(
    arch: str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: bool = True,
    **overrides,
) -> Path:
    """Save a tiny ``arch`` model (safetensors) and, by default, its tokenizer into ``path``.

    Returns ``path`` as a ``Path``. Example::

        d = make_model_dir("gpt2", tmp_path / "gpt2")
        AutoModelForCausalLM.from_pretrained(d)
    """
    path = Path(path)
    model = make_model(arch, seed=seed, dtype=dtype, **overrides)
    model.save_pretrained(path)
    if tokenizer:
        if model.config.vocab_size != VOCAB_SIZE:
            raise ValueError(f"the tokenizer has {VOCAB_SIZE} tokens; pass tokenizer=False with vocab_size")
        make_tokenizer().save_pretrained(path)
    return path
