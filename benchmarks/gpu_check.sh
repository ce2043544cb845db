#!/usr/bin/env bash
# The GPU checks, in stages that each fit one call of a lent GPU machine (at most 10 minutes a
# call, 15 minutes of device time a session, starts included; 64 GiB of disk).
#
#   bash benchmarks/gpu_check.sh --plan     # one line per stage: its time and disk budget
#   bash benchmarks/gpu_check.sh build      # then local, remote, serving: one stage per call
#
# Device tool: run(command="bash benchmarks/gpu_check.sh build", timeout_s=<the stage's budget + 60>);
# the peers travel as wheels in .whl/ (carry=[".whl"]). Every stage installs the tree first (seconds
# when the warm machine still has the build), writes what it measured under $OUT as it goes (a
# stage cut by its time limit still returns what it had), stops its own steps inside its budget, and
# removes what it wrote to disk when it ends, however it ends. benchmarks/NOTES.md says what each
# stage measures and what a failing first run tells us.
set -euo pipefail
export PYTHONUNBUFFERED=1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}

# Budgets, from CPU analogues timed on the development machine and the H100 ceilings of ANCHORS.md
# (the arithmetic is in benchmarks/NOTES.md, "GPU check in stages"). Sizes in GB of bf16 tensors.
STAGES=(build local remote serving)
declare -A BUDGET_S=([build]=240 [local]=400 [remote]=300 [serving]=360)
declare -A DISK_GB=([build]=6 [local]=10 [remote]=5 [serving]=3)
declare -A WHAT=(
  [build]="build, import check, GPU and stand-in tests (round trip of ${ROUNDTRIP_GIB:=4} GiB)"
  [local]="local warm/cold loads of a ${LOCAL_GB:=4} GB checkpoint, flashtensors beside the peers"
  [remote]="a ${REMOTE_GB:=2} GB checkpoint over loopback HTTP to cuda:0 through the pinned ring"
  [serving]="SGLang and vLLM serving checks where installed")

plan() {
  local seconds=0 disk=0
  for s in "${STAGES[@]}"; do
    echo "stage $s: <= ${BUDGET_S[$s]} s, <= ${DISK_GB[$s]} GB disk"
    echo "  ${WHAT[$s]}"
    seconds=$((seconds + BUDGET_S[$s])) disk=$((disk + DISK_GB[$s]))
  done
  echo "all stages: <= $seconds s, <= $disk GB disk (even were nothing removed between them)"
}

STAGE=${1:---plan}
if [[ $STAGE == --plan ]]; then plan; exit 0; fi
if [[ -z ${BUDGET_S[$STAGE]+x} ]]; then
  echo "usage: $0 --plan | ${STAGES[*]}" >&2
  exit 2
fi

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_out.XXXXXX")}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"; echo "stage $STAGE: scratch removed; results in $OUT"' EXIT
export TMPDIR=$WORK  # whatever a step writes to a temporary directory goes with the stage
DEADLINE=$((SECONDS + BUDGET_S[$STAGE] - 10))  # 10 s kept for cleaning up

# Runs a step with what is left of the stage's budget; a step cut there stops the stage (set -e).
within() {
  local left=$((DEADLINE - SECONDS))
  if ((left <= 0)); then echo "stage $STAGE: out of time before: $*" >&2; return 124; fi
  timeout --signal=INT --kill-after=5 "$left" "$@"
}

log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/stage.log"; }

install_tree() {
  if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    log "installing the peers' wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$ROOT"/.whl/*.whl
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  log "building and installing flashtensors"
  if ! within "$PY" -m pip install -v --no-deps --no-build-isolation -e "$ROOT" >"$OUT/build.log" 2>&1; then
    echo "stage $STAGE: FAILED: the build (whole log: build.log); its errors:" >&2
    grep -E -m 30 "error|Error|ERROR" "$OUT/build.log" >&2 || true
    tail -n 20 "$OUT/build.log" >&2
    exit 1
  fi
  log "import check"
  within "$PY" - <<'EOF' 2>&1 | tee "$OUT/import.txt"
import os

import torch
from flashtensors import _native

C = _native.module()
assert torch.cuda.is_available(), "torch sees no GPU"
torch.empty(1, device="cuda:0")  # CUDA initialised, as before any load
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
print("CUDA runtime found:", C.cuda_runtime_available(), C.cuda_runtime_path() or "(none)")
assert C.cuda_runtime_available(), "the core found no CUDA runtime"
mapped = sorted({os.path.realpath(line.split()[-1]) for line in open("/proc/self/maps") if "libcudart" in line})
print("libcudart files mapped:", mapped)
assert os.path.realpath(C.cuda_runtime_path()) in mapped, "the core's runtime is not one the process had mapped"
if len(mapped) > 1:
    print("WARNING: more than one CUDA runtime mapped")
EOF
}

stage_build() {
  nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv \
    >"$OUT/gpu.txt" 2>&1 || echo "nvidia-smi failed" >>"$OUT/gpu.txt"
  install_tree
  log "GPU tests and the stand-in CUDA tests"
  FLASH_GPU_ROUNDTRIP_GIB=$ROUNDTRIP_GIB within "$PY" -m pytest -q -p no:cacheprovider --basetemp "$WORK/pytest" \
    "$ROOT"/tests/test_cuda.py "$ROOT"/tests/test_cuda_path_async.py "$ROOT"/tests/test_roundtrip.py \
    "$ROOT"/tests/test_safetensors_direct.py "$ROOT"/tests/test_load_into.py \
    "$ROOT"/tests/test_transformers_safetensors.py "$ROOT"/tests/test_accelerate.py 2>&1 | tee "$OUT/tests.log"
}

stage_local() {
  install_tree
  log "bench: ${LOCAL_GB} GB, warm and cold, fresh process per run"
  within "$PY" -m flashtensors.cli bench --size "$LOCAL_GB" --device cuda:0 --runs 3 --dir "$WORK/bench" \
    --json "$OUT/local.json" 2>&1 | tee "$OUT/local.log"
}

stage_remote() {
  install_tree
  if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then
    log "bench over nginx on loopback, uncapped and capped at 100 MB/s per connection"
    within "$PY" -m flashtensors.cli bench --size "$REMOTE_GB" --device cuda:0 --runs 3 --nginx --limit-rate 100m \
      --dir "$WORK/bench" --json "$OUT/remote.json" 2>&1 | tee "$OUT/remote.log"
  fi
  log "the pinned ring shared by remote and local loads to cuda:0"
  within "$PY" "$HERE/remote_ring_check.py" --size "$REMOTE_GB" --dir "$WORK/ring" --json "$OUT/ring.json" 2>&1 \
    | tee "$OUT/ring.log"
}

stage_serving() {
  install_tree
  log "serving checks"
  within "$PY" "$HERE/serving_check.py" "$WORK/serving" 2>&1 | tee "$OUT/serving.log"
  cp "$WORK"/serving/*.log "$OUT/" 2>/dev/null || true
}

log "stage $STAGE: budget ${BUDGET_S[$STAGE]} s, ${DISK_GB[$STAGE]} GB disk; scratch $WORK"
"stage_$STAGE"
log "stage $STAGE: done; disk used at the end: $(du -sh "$WORK" | cut -f1)"
