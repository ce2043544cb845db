"""Turning what the user points ``bench`` at into the same checkpoint in both formats."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import open_checkpoint
from .shapes import QWEN3, digest, make_checkpoint, moe_shapes, numel, shape_for_size, tensor_shapes

HUB_SHARDS = 4


def prepare_hub_model(args, log=print):
    """A Hugging Face model directory for ``bench --hub``: about ``args.size`` GB (default
    1 GiB) of bf16 tensors in HUB_SHARDS safetensors shards, their index and a config.
    Returns (the directory, expected {name: crc32c})."""
    gigabytes = args.size or 2**30 / 1e9
    shapes = tensor_shapes(shape_for_size(gigabytes))
    root = Path(args.dir) / f"hub-{gigabytes:.2f}gb"
    log(f"preparing a {gigabytes:.2f} GB model in {HUB_SHARDS} shards in {root} (reused if present)")
    expected = make_checkpoint(shapes, root, log=log, shards=HUB_SHARDS)
    model = root / "safetensors"
    total = sum(2 * numel(dims) for dims in shapes.values())
    weight_map = {name: f.name for f in sorted(model.glob("*.safetensors"))
                  for name in open_checkpoint(f).index.tensors}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", "torch_dtype": "bfloat16"}))
    return model, expected


def prepare(args, log=print):
    """Returns (flash_dir, safetensors_files, expected {name: crc32c})."""
    work = Path(args.dir)
    if args.path:
        return _from_path(Path(args.path), work, log)
    if args.tensors:
        label = f"moe-{args.tensors}x{args.tensor_kb}kib"
        shapes = moe_shapes(args.tensors, args.tensor_kb)
        log(f"preparing an MoE-style checkpoint of {args.tensors} bf16 tensors of {args.tensor_kb} KiB "
            f"in {work / label} (reused if present)")
    else:
        label = "qwen3-" + (args.model or f"{args.size}gb")
        shapes = tensor_shapes(QWEN3[args.model] if args.model else shape_for_size(args.size))
        log(f"preparing a {label}-shaped bf16 checkpoint in {work / label} (reused if present)")
    root = work / label
    expected = make_checkpoint(shapes, root, log=log)
    return root / "flash", sorted((root / "safetensors").glob("*.safetensors")), expected


def _from_path(path: Path, work: Path, log):
    from safetensors.torch import save_file

    from .. import flash
    from ..writer import CheckpointWriter

    ckpt = open_checkpoint(path)
    if ckpt.kind == "flash":
        index = ckpt.index
        out = work / (path.name + "-safetensors")
        out.mkdir(parents=True, exist_ok=True)
        target = out / "model.safetensors"
        if not target.exists():
            log(f"writing a safetensors copy of {path} to {target}")
            tensors = flash.load_dict(path, "cpu")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(target))
        expected = {n: e.crc32c for n, e in index.tensors.items() if e.strides is None}
        return path, [target], expected
    files = [Path(f) for f in ckpt.sources]
    flash_dir = work / (path.stem + "-flash")
    from safetensors.torch import load_file

    expected = {}
    log(f"writing a flash copy of {path} to {flash_dir}")
    with CheckpointWriter(flash_dir, overwrite=True) as writer:
        for f in files:
            shard = load_file(str(f))
            expected.update({k: digest(v) for k, v in shard.items()})
            writer.write(shard)
    return flash_dir, files, expected
