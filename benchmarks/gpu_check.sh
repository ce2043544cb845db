#!/usr/bin/env bash
# One call on a lent GPU machine: build, run the GPU tests, benchmark an 8B-shaped load.
# From this machine (device tool): run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
# Peers travel as wheels in .whl/ (see /work/.library/device/README.md, "Notes").
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-build-isolation -e . 2>&1 | tail -2
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_roundtrip.py tests/test_cuda_path_async.py \
  tests/test_safetensors_direct.py tests/test_transformers_safetensors.py tests/test_accelerate.py 2>&1 \
  | tee "$OUT/tests.log" | tail -5
# Fresh-process runs (the default): flashtensors from the flash format and from the
# safetensors files in place (issue 11: within 10% of each other), load_file, and the peers.
python3 -m flashtensors.cli bench --model "${MODEL:-8b}" --device cuda:0 --runs 3 --dir /tmp/ftb \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -14
# Serving stacks where installed (SGLang's server with --load-format flash; vLLM's sleep
# level 2 reloading through flashtensors); each is skipped cleanly when its package is absent.
python3 benchmarks/serving_check.py "$OUT/serving" 2>&1 | tee "$OUT/serving.log" | tail -4
# Still unmeasured on a GPU: load times through SGLang and vLLM at real model sizes, and
# tensor-parallel group reads over NCCL through either engine (the CPU tests cover gloo).
