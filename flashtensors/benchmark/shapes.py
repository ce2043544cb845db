"""Synthetic checkpoints shaped like Qwen3 models, written as flash and as safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SHARD_BYTES = 4 << 30  # Hugging Face's usual shard size


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int = 128
    vocab: int = 151936
    tied: bool = False


QWEN3 = {
    "0.6b": Shape(1024, 3072, 28, 16, 8, tied=True),
    "4b": Shape(2560, 9728, 36, 32, 8, tied=True),
    "8b": Shape(4096, 12288, 36, 32, 8),
    "14b": Shape(5120, 17408, 40, 40, 8),
    "32b": Shape(5120, 25600, 64, 64, 8),
}


def tensor_shapes(s: Shape) -> dict:
    """Name -> shape for every tensor of a Qwen3-like model, in checkpoint order."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    out = {"model.embed_tokens.weight": (s.vocab, s.hidden)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (q, s.hidden), p + "self_attn.k_proj.weight": (kv, s.hidden),
            p + "self_attn.v_proj.weight": (kv, s.hidden), p + "self_attn.o_proj.weight": (s.hidden, q),
            p + "self_attn.q_norm.weight": (s.head_dim,), p + "self_attn.k_norm.weight": (s.head_dim,),
            p + "mlp.gate_proj.weight": (s.intermediate, s.hidden),
            p + "mlp.up_proj.weight": (s.intermediate, s.hidden),
            p + "mlp.down_proj.weight": (s.hidden, s.intermediate),
            p + "input_layernorm.weight": (s.hidden,), p + "post_attention_layernorm.weight": (s.hidden,),
        })
    out["model.norm.weight"] = (s.hidden,)
    if not s.tied:
        out["lm_head.weight"] = (s.vocab, s.hidden)
    return out


def moe_shapes(tensors: int, tensor_kb: int) -> dict:
    """Name -> shape of ``tensors`` bf16 expert weights of ``tensor_kb`` KiB each, named
    as MoE checkpoints name them (128 experts x 3 projections per layer): the per-tensor
    costs of a Qwen3-30B-A3B (about 19k tensors) or a DeepSeek-V3 (about 91k)."""
    rows = max(1, tensor_kb * 1024 // 2 // 64)
    out = {}
    for i in range(tensors):
        layer, rest = divmod(i, 384)
        expert, proj = divmod(rest, 3)
        out[f"model.layers.{layer}.mlp.experts.{expert}.{('gate_proj', 'up_proj', 'down_proj')[proj]}.weight"] = \
            (rows, 64)
    return out


def shape_for_size(gigabytes: float) -> Shape:
    """A Qwen3-like shape of about ``gigabytes`` GB in bf16 (small vocab, 2048 wide)."""
    base = Shape(2048, 6144, 1, 16, 8, vocab=32768, tied=True)
    per_layer = 2 * sum(numel(v) for k, v in tensor_shapes(base).items() if ".layers." in k)
    embed = 2 * base.vocab * base.hidden
    layers = max(1, round((gigabytes * 1e9 - embed) / per_layer))
    return Shape(**{**asdict(base), "layers": layers})


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def make_checkpoint(shapes: dict, root: Path, log=print, shards: int | None = None) -> dict:
    """Writes ``root/flash`` and ``root/safetensors/*.safetensors`` (shards of at most
    SHARD_BYTES, or ``shards`` shards of about equal size) with the same random bf16 tensors
    of ``shapes`` (name -> shape), one shard in memory at a time. Reuses them if already made
    for the same shapes and shards. Returns {name: crc32c} of every tensor, to check loads
    against."""
    import torch
    from safetensors.torch import save_file

    from ..writer import CheckpointWriter

    marker = root / "bench.json"
    key = json.loads(json.dumps(list(shapes.items()) + ([shards] if shards else [])))  # as read back
    if marker.is_file() and json.loads(marker.read_text()).get("shapes") == key:
        return json.loads(marker.read_text())["crc32c"]
    root.mkdir(parents=True, exist_ok=True)
    st_dir = root / "safetensors"
    st_dir.mkdir(exist_ok=True)
    for old in st_dir.glob("*.safetensors"):
        old.unlink()
    gen = torch.Generator().manual_seed(0)
    crcs, shard, shard_bytes, n_shard, done = {}, {}, 0, 0, 0
    total = sum(2 * numel(dims) for dims in shapes.values())
    with CheckpointWriter(root / "flash", overwrite=True) as writer:
        def flush():
            nonlocal shard, shard_bytes, n_shard
            if shard:
                save_file(shard, str(st_dir / f"model-{n_shard:05d}.safetensors"))
                writer.write(shard)
                log(f"  wrote shard {n_shard} ({shard_bytes / 1e9:.2f} GB)")
                shard, shard_bytes, n_shard = {}, 0, n_shard + 1
        for name, dims in shapes.items():
            t = torch.randn(dims, generator=gen, dtype=torch.float32).to(torch.bfloat16)
            crcs[name] = digest(t)
            if (shard_bytes + t.nbytes > SHARD_BYTES) if shards is None else (done * shards // total > n_shard):
                flush()
            done += t.nbytes
            shard[name] = t
            shard_bytes += t.nbytes
        flush()
    marker.write_text(json.dumps({"shapes": key, "crc32c": crcs}))
    return crcs


def digest(t) -> int:
    """CRC-32C of a tensor's bytes (copied to the CPU if needed)."""
    from .. import _native

    t = t.detach().contiguous().cpu()
    return _native.module().crc32c(t.data_ptr(), t.nbytes) if t.nbytes else 0
