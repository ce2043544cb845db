"""Serving stacks on a GPU machine, each only where it is installed (skipped cleanly otherwise):

* SGLang: a real server (``python -m sglang.launch_server``) started with ``--load-format flash``
  on a tiny Qwen2 flash checkpoint, then on the same weights as safetensors with SGLang's
  own loader; greedy completions of both must match.
* vLLM: sleep mode level 2 with the weights reloaded through ``--load-format flash``
  (``sleep(2)``, ``wake_up(["weights"])``, ``reload_weights``, ``wake_up(["kv_cache"])``);
  greedy outputs before and after must match.

    python3 benchmarks/serving_check.py OUT_DIR        # run by benchmarks/gpu_check.sh

Prints one line per check (``ok``, ``FAILED`` or ``skipped``) and leaves logs in OUT_DIR.
The model is built from a config (tests/support/tiny_models.py): the machine has no network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
PROMPTS = ["hello world", "The quick brown fox"]


def main(out: Path) -> int:
    from vllm_models import make_model_pair

    out.mkdir(parents=True, exist_ok=True)
    st, fl = make_model_pair("qwen2", out / "models")
    failed = 0
    for name, check in (("sglang server", check_sglang), ("vllm sleep level 2", check_vllm_sleep)):
        if importlib.util.find_spec(name.split()[0]) is None:
            print(f"{name}: skipped ({name.split()[0]} is not installed)")
            continue
        try:
            print(f"{name}: ok, {check(st, fl, out)}")
        except Exception as e:  # noqa: BLE001 -- report and go on to the next check
            failed += 1
            print(f"{name}: FAILED: {e}")
    return 1 if failed else 0


def check_sglang(st: Path, fl: Path, out: Path) -> str:
    flash = _sglang_generate(fl, "flash", out / "sglang-flash.log")
    reference = _sglang_generate(st, "safetensors", out / "sglang-safetensors.log")
    if flash != reference:
        raise AssertionError(f"flash {flash} != safetensors {reference}")
    read = [line for line in (out / "sglang-flash.log").read_text().splitlines() if "flashtensors: read" in line]
    return f"same greedy text as safetensors; {read[-1].split('] ')[-1] if read else 'no read logged'}"


def _sglang_generate(model: Path, load_format: str, log_path: Path, timeout: float = 300) -> list:
    from vllm_models import _free_port, _stop

    port = _free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model), "--load-format", load_format,
           "--host", "127.0.0.1", "--port", str(port), "--mem-fraction-static", "0.2", "--dtype", "float32",
           "--disable-cuda-graph"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the SGLang server did not come up (exit {proc.poll()}); see {log_path}")
            time.sleep(2)
        body = {"text": PROMPTS, "sampling_params": {"temperature": 0, "max_new_tokens": 8}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return [r["text"] for r in json.load(resp)]
    finally:
        _stop(proc)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def check_vllm_sleep(st: Path, fl: Path, out: Path) -> str:
    script = f"""
from vllm import LLM, SamplingParams
llm = LLM({str(fl)!r}, load_format="flash", enable_sleep_mode=True, gpu_memory_utilization=0.2,
          max_model_len=256, enforce_eager=True, dtype="float32")
greedy = SamplingParams(temperature=0, max_tokens=8)
before = [o.outputs[0].token_ids for o in llm.generate({PROMPTS!r}, greedy)]
llm.sleep(level=2)
llm.wake_up(tags=["weights"])
llm.collective_rpc("reload_weights")
llm.wake_up(tags=["kv_cache"])
after = [o.outputs[0].token_ids for o in llm.generate({PROMPTS!r}, greedy)]
assert before == after, (before, after)
print("SAME", before)
"""
    log = out / "vllm-sleep.log"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or "SAME" not in proc.stdout:
        raise AssertionError(f"exit {proc.returncode}; see {log}")
    return "greedy outputs equal before sleep(2) and after reload_weights through flashtensors"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
