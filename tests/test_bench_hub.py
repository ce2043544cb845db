"""``flashtensors bench --hub`` and the loopback Hub it loads from (flashtensors/benchmark/hub.py:
a Python resolver in front of nginx serving the blobs): huggingface_hub downloads from it as
from the Hub, flashtensors streams from it, and the benchmark runs end to end, every tensor
and the filled Hub cache checked (speed is not asserted)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hub_models import hub_in_this_process
from safetensors.torch import load_file, save_file

from flashtensors import flash
from flashtensors.benchmark.hub import BenchHub

from helpers import assert_same, flashtensors
from remote_servers import need_nginx


@pytest.fixture
def model(tmp_path):
    """A model directory: two safetensors shards (no index: every *.safetensors) and a config."""
    need_nginx()
    root = tmp_path / "model"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        save_file({f"layer{i}.w": torch.randn(64, 32, generator=g), f"layer{i}.b": torch.randn(32, generator=g)},
                  str(root / f"model-0000{i + 1}-of-00002.safetensors"))
    (root / "config.json").write_text('{"model_type": "tiny"}')
    return root


def test_the_bench_hub_serves_huggingface_hub_and_flashtensors(model, tmp_path):
    from huggingface_hub import snapshot_download

    with BenchHub("bench/tiny", model, tmp_path / "blobs", limit_rate="10m") as hub, \
            hub_in_this_process(hub, tmp_path / "hf-cache"):
        snapshot = snapshot_download("bench/tiny", cache_dir=tmp_path / "hf-downloaded")
        resolves = hub.resolves
        loaded = flash.load_dict("bench/tiny", "cpu")
        resolves_by_flashtensors = hub.resolves - resolves
    expected = {**load_file(str(model / "model-00001-of-00002.safetensors")),
                **load_file(str(model / "model-00002-of-00002.safetensors"))}
    assert_same(dict(sorted(loaded.items())), dict(sorted(expected.items())))
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (tmp_path / "hf-downloaded").joinpath(snapshot, name).read_bytes() == (model / name).read_bytes()
    assert 2 <= resolves_by_flashtensors <= 2 + 3  # each weight file's redirect resolved once
    cached = tmp_path / "hf-cache" / "models--bench--tiny" / "snapshots" / hub.commit
    assert (cached / "model-00002-of-00002.safetensors").read_bytes() == \
        (model / "model-00002-of-00002.safetensors").read_bytes()


def test_bench_hub_end_to_end(tmp_path):
    need_nginx()
    if shutil.which("curl") is None:
        pytest.skip("the remote benchmark compares with curl, which is not installed")
    out = tmp_path / "bench.json"
    r = flashtensors("bench", "--hub", "--size", "0.01", "--limit-rate", "500m", "--device", "cpu", "--runs", "1",
                     "--dir", tmp_path / "work", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "x snapshot_download-then-load_file" in r.stdout
    hub = json.loads(out.read_text())["sources"][0]
    assert hub["url"].startswith("hf://bench/") and hub["label"] == "Hub, CDN 500m/conn"
    for key in ("curl", "flashtensors", "hf"):  # each ran, its tensors (and the Hub cache) checked
        assert hub["peers"][key]["error"] == "" and hub["peers"][key]["median"] > 0, (key, hub["peers"][key])
