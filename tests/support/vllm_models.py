"""Support for the vLLM tests: tiny model directories in both formats, and vLLM runs.

vLLM's CPU engine starts worker processes, so every engine runs in a fresh Python
process: this file is also the script that runs them. A run is a list of jobs, each
one engine; the jobs of one run share that process (one import of vLLM), one after
another.

Example::

    st, fl = make_model_pair("qwen2", tmp_path)              # same weights, two formats
    out = run_jobs([{"model": st, "load_format": "safetensors"},
                    {"model": fl, "load_format": "flash"}], tmp_path)
    assert out.results[0]["token_ids"] == out.results[1]["token_ids"]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROMPTS = ["hello world", "The quick brown fox", "1, 2, 3,"]
MAX_TOKENS = 8
# Small enough for a 2-core CI machine: no compilation, float32 for bitwise-stable
# greedy decoding, a small KV cache (on CPU, gpu_memory_utilization is a share of RAM).
ENGINE_ARGS = {"max_model_len": 256, "enforce_eager": True, "dtype": "float32", "gpu_memory_utilization": 0.1,
               "max_num_seqs": 4}
SERVER_ARGS = ["--max-model-len", "256", "--enforce-eager", "--dtype", "float32",
               "--gpu-memory-utilization", "0.1", "--max-num-seqs", "4"]


def make_model_pair(arch: str, root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """``root/arch-safetensors`` and ``root/arch-flash``: one tiny model, same tokenizer and
    config, weights as safetensors in the first and only as a flash checkpoint in the second.
    """
    from flashtensors import flash

    from tiny_models import make_model, make_tokenizer

    model = make_model(arch, seed=seed)
    tokenizer = make_tokenizer()
    st_dir, fl_dir = root / f"{arch}-safetensors", root / f"{arch}-flash"
    model.save_pretrained(st_dir)
    model.config.save_pretrained(fl_dir)
    model.generation_config.save_pretrained(fl_dir)
    flash.save_dict(model.state_dict(), fl_dir)
    for d in (st_dir, fl_dir):
        tokenizer.save_pretrained(d)
    return st_dir, fl_dir


def upload_to_s3(s3_server, dirs: dict[str, Path]) -> tuple[str, dict]:
    """Uploads each directory of ``dirs`` (prefix: directory) to a fresh bucket of moto's S3
    server; returns the bucket and the AWS environment an engine needs to read it."""
    from flashtensors.benchmark.nginx import free_port
    from flashtensors.stores.s3 import client

    from remote_servers import upload

    env = {"AWS_ENDPOINT_URL": s3_server.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    bucket = f"vllm-{free_port()}"
    with aws_environment(env):
        c = client()
        c.create_bucket(Bucket=bucket)
        for prefix, local in dirs.items():
            upload(c, bucket, local, prefix)
    return bucket, env


@contextmanager
def aws_environment(env: dict):
    """This process's environment set to ``env`` (and no other AWS settings) within the block."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


@dataclass
class Run:
    results: list  # one dict per job: {"token_ids": [...], "texts": [...]} or {"error": str}
    log: str  # everything the process and vLLM's processes printed


def run_jobs(jobs: list[dict], workdir: Path, timeout: float = 900, env: dict | None = None) -> Run:
    """Runs ``jobs`` in one fresh process and returns their results.

    A job: ``model`` (a directory), ``load_format``, optional ``engine_args`` (more
    ``LLM`` arguments), ``env`` (environment variables for this engine), ``extra_config``
    (vLLM's model_loader_extra_config), ``worker_extension`` (start the engine with
    FlashWorkerExtension), ``save_per_rank`` (a directory for save_vllm_checkpoint
    after generating) and ``reloads`` (steps run after generating, see :func:`_reload`;
    their results in ``"reloads"``). A job whose engine fails gives ``{"error": ...}``; a
    FlashError from saving is kept as ``"save_error"``. ``env``: more environment for the
    process, set before vLLM is imported (huggingface_hub reads ``HF_HUB_OFFLINE`` then).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec, out = workdir / "jobs.json", workdir / "results.json"
    spec.write_text(json.dumps(jobs, default=str))  # paths, anywhere in a job, as strings
    proc = subprocess.run(
        [sys.executable, __file__, str(spec), str(out)],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=workdir, env={**engine_env(), **(env or {})},
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"the vLLM run failed (exit {proc.returncode}):\n{log[-6000:]}")
    return Run(json.loads(out.read_text()), log)


def engine_env() -> dict:
    """The environment for vLLM processes: the test support modules importable, no network."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", TOKENIZERS_PARALLELISM="false")
    return env


@contextmanager
def serve(model: Path, load_format: str, log_path: Path, timeout: float = 600):
    """Runs the OpenAI-compatible server that ``vllm serve`` runs, on 127.0.0.1 and a free
    port, until it answers; yields its base URL; stops it (and its engine) on exit.

    Example::

        with serve(fl_dir, "flash", tmp_path / "server.log") as url:
            complete(url, str(fl_dir), PROMPTS)
    """
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--load-format", load_format, "--host", "127.0.0.1", "--port", str(port), *SERVER_ARGS]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=engine_env(),
                                cwd=log_path.parent, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{url}/v1/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up (exit {proc.poll()}):\n"
                                     f"{log_path.read_text()[-6000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop(proc)


def complete(url: str, model: str, prompts: list[str]) -> list[dict]:
    """POSTs a greedy ``/v1/completions`` request; returns ``{"text", "token_ids"}`` per prompt."""
    body = {"model": model, "prompt": prompts, "max_tokens": MAX_TOKENS, "temperature": 0,
            "return_token_ids": True}
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        choices = sorted(json.load(resp)["choices"], key=lambda c: c["index"])
    return [{"text": c["text"], "token_ids": c["token_ids"]} for c in choices]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its engine down), then SIGKILL its process group if needed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: stray engine processes
    except ProcessLookupError:
        pass
    proc.wait()


def _run_job(job: dict) -> dict:
    from vllm import LLM

    from flashtensors import FlashError
    from flashtensors.integrations.vllm import FlashWorkerExtension, save_vllm_checkpoint

    kwargs = dict(ENGINE_ARGS, **job.get("engine_args", {}), model=job["model"], load_format=job["load_format"])
    if "extra_config" in job:
        kwargs["model_loader_extra_config"] = job["extra_config"]
    if job.get("worker_extension"):
        kwargs["worker_extension_cls"] = FlashWorkerExtension.QUALNAME
    saved_env = dict(os.environ)
    os.environ.update(job.get("env", {}))  # read by the engine processes LLM() starts
    try:
        llm = LLM(**kwargs)
    except Exception as e:  # noqa: BLE001 -- the cause is in the engine's log
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    result = _generate(llm)
    result["reloads"] = [_reload(llm, step) for step in job.get("reloads", [])]
    if job.get("save_per_rank"):
        try:
            save_vllm_checkpoint(llm, job["save_per_rank"])
        except FlashError as e:
            result["save_error"] = str(e)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return result


def _generate(llm) -> dict:
    """Greedy outputs for PROMPTS: ``{"token_ids": [...], "texts": [...]}``."""
    from vllm import SamplingParams

    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outputs],
            "texts": [o.outputs[0].text for o in outputs]}


def _reload(llm, step: dict) -> dict:
    """One reload step of a job: first, if ``overwrite`` is ``[src, dst]``, flash checkpoint
    ``src`` is written over flash checkpoint ``dst`` in place (``save_dict(overwrite=True)``);
    then RPC ``rpc`` (default ``reload_weights``) runs on every worker with ``weights_path``
    (if the step has one); then the engine generates. Gives the greedy outputs and the RPC's
    per-worker results as ``"rpc"``, or its error as ``"error"``."""
    from flashtensors import flash

    if "overwrite" in step:
        src, dst = step["overwrite"]
        flash.save_dict(flash.load_dict(src), dst, overwrite=True)
    kwargs = {"weights_path": step["weights_path"]} if "weights_path" in step else {}
    try:
        answers = {"rpc": llm.collective_rpc(step.get("rpc", "reload_weights"), kwargs=kwargs)}
    except Exception as e:  # noqa: BLE001 -- the worker's error, for the test to check
        answers = {"error": f"{type(e).__name__}: {e}"}
    return {**_generate(llm), **answers}


def main(spec: str, out: str) -> None:
    jobs = json.loads(Path(spec).read_text())
    results = [_run_job(job) for job in jobs]
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
