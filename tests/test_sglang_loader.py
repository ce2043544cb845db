"""SGLang's ``--load-format flash``, through SGLang's real model loader on the CPU.

SGLang runs its plugins (flashtensors' ``sglang.srt.plugins`` entry point among them), parses
the command line with its own parser, builds a real Qwen2 or Llama model and loads it through
the flash loader; every parameter must equal what SGLang's own safetensors loader gives for
the same weights. Flash checkpoints and unconverted safetensors directories, local and on
moto's S3 server (the ``weights`` option), at tensor parallelism 1 and 2 (two processes in
SGLang's gloo process groups, the checkpoint read once by the group). A full SGLang server
cannot start here (its CPU kernels, sgl_kernel, exist on PyPI only as a CUDA build);
benchmarks/gpu_check.sh starts one on a GPU machine.
"""

from __future__ import annotations

import json

import pytest

from sglang_models import load_cases, require_sglang

require_sglang()

from flashtensors.integrations.vllm import fetch_model_files  # noqa: E402

from vllm_models import aws_environment, make_model_pair, upload_to_s3  # noqa: E402

pytestmark = pytest.mark.slow
ARCHS = ("qwen2", "llama")


def flash_args(model, **extra) -> list[str]:
    argv = ["--model-path", str(model), "--load-format", "flash"]
    return argv + (["--model-loader-extra-config", json.dumps(extra)] if extra else [])


@pytest.fixture(scope="module")
def models(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("sglang")
    dirs = {arch: make_model_pair(arch, root) for arch in ARCHS}
    other_st, other = make_model_pair("qwen2", root / "other", seed=1)
    bucket, aws = upload_to_s3(s3_server, {"qwen2-flash": dirs["qwen2"][1], "qwen2-st": dirs["qwen2"][0]})
    with aws_environment(aws):
        fetched = fetch_model_files(f"s3://{bucket}/qwen2-st", root / "fetched")
    return {"dirs": dirs, "other": other, "other_st": other_st, "bucket": bucket, "aws": aws, "fetched": fetched,
            "root": root}


@pytest.fixture(scope="module")
def tp1(models):
    dirs, bucket, other_st = models["dirs"], models["bucket"], models["other_st"]
    cases = {}
    for arch, (st, fl) in dirs.items():
        cases[f"{arch}/flash"] = {"argv": flash_args(fl), "reference": st}
        cases[f"{arch}/unconverted"] = {"argv": flash_args(st), "reference": st}
    cases.update({
        "qwen2/other weights": {"argv": flash_args(models["other"]), "reference": dirs["qwen2"][0]},
        "qwen2/s3 flash": {"argv": flash_args(models["fetched"], weights=f"s3://{bucket}/qwen2-flash"),
                           "reference": dirs["qwen2"][0]},
        "qwen2/s3 safetensors": {"argv": flash_args(models["fetched"], weights=f"s3://{bucket}/qwen2-st", timeout=20),
                                 "reference": dirs["qwen2"][0]},
        # Started on one qwen2, updated in place (SGLang's update_weights_from_disk) to the other.
        "update from disk": {"argv": flash_args(dirs["qwen2"][1]), "update": models["other"], "reference": other_st},
        "unknown option": {"argv": flash_args(dirs["qwen2"][1], thread=2), "reference": dirs["qwen2"][0]},
        # The fetched directory (config and tokenizer) without the URL of its weights.
        "no weights": {"argv": flash_args(models["fetched"]), "reference": dirs["qwen2"][0]},
    })
    [run] = load_cases(list(cases.values()), models["root"] / "tp1", env=models["aws"])
    return {"results": dict(zip(cases, run.results)), "log": run.log}


@pytest.mark.parametrize("case", [f"{arch}/{kind}" for arch in ARCHS for kind in ("flash", "unconverted")])
def test_flash_load_format_gives_the_parameters_of_sglangs_safetensors_loader(tp1, case):
    got = tp1["results"][case]
    assert "error" not in got, got
    assert got["loader"] == "FlashModelLoader"  # --load-format flash reached SGLang through the plugin
    assert got["equal"], got["differ"]


def test_other_weights_are_told_apart(tp1):
    # The comparison can fail: a flash checkpoint of other weights differs in every weight.
    got = tp1["results"]["qwen2/other weights"]
    assert "error" not in got, got
    assert not got["equal"] and "model.layers.0.self_attn.qkv_proj.weight" in got["differ"]


@pytest.mark.parametrize("case, layout", [("qwen2/s3 flash", "full"), ("qwen2/s3 safetensors", "safetensors")])
def test_weights_streamed_from_s3(tp1, models, case, layout):
    got = tp1["results"][case]
    assert "error" not in got, got
    assert got["equal"], got["differ"]
    url = f"s3://{models['bucket']}/qwen2-{'flash' if layout == 'full' else 'st'}"
    assert f"flashtensors: read {url} ({layout} layout)" in tp1["log"]


def test_sglangs_update_weights_from_disk_reads_through_the_flash_loader(tp1, models):
    got = tp1["results"]["update from disk"]
    assert "error" not in got, got
    assert got["equal"], got["differ"]  # the other weights, not the ones it started with
    assert f"flashtensors: read {models['other']} (full layout)" in tp1["log"]


def test_bad_input_is_a_clear_error(tp1, models):
    assert "FlashConfigError" in tp1["results"]["unknown option"]["error"]
    assert "unknown model_loader_extra_config key(s) for --load-format flash: ['thread']" in \
        tp1["results"]["unknown option"]["error"]
    empty = tp1["results"]["no weights"]["error"]
    assert "FlashFormatError" in empty and f"{models['fetched']}: holds no weights flashtensors reads" in empty


@pytest.fixture(scope="module")
def tp2(models):
    (q_st, q_fl), (l_st, _) = models["dirs"]["qwen2"], models["dirs"]["llama"]
    cases = [{"argv": flash_args(q_fl), "reference": q_st}, {"argv": flash_args(l_st), "reference": l_st}]
    return load_cases(cases, models["root"] / "tp2", tp_size=2)


def test_tensor_parallel_ranks_read_the_checkpoint_once_as_a_group(tp2, models):
    (_, q_fl), (l_st, _) = models["dirs"]["qwen2"], models["dirs"]["llama"]
    for rank, run in enumerate(tp2):
        for got in run.results:
            assert "error" not in got, (rank, got)
            assert got["equal"], (rank, got["differ"])  # each rank's shard, as SGLang's loader shards it
        down = run.results[0]["shapes"]["model.layers.0.mlp.down_proj.weight"]
        assert down[1] * 2 == 256, down  # intermediate_size 256, split over the 2 ranks
        assert f"flashtensors: read {q_fl} (full layout, once by the 2 tensor-parallel ranks)" in run.log
        assert f"flashtensors: read {l_st} (safetensors layout, once by the 2 tensor-parallel ranks)" in run.log
