"""SGLang's ``--load-format flash`` with ``--model-path org/name``: a model named by Hub repo
ID, read from the mock Hub on loopback (tests/support/hub_mock.py) through SGLang's real model
loader on the CPU (see test_sglang_loader.py), at a ``--revision`` the main branch has moved
past, into ``--download-dir`` as the Hub cache. Every parameter must equal what SGLang's own
safetensors loader gives for that revision's weights."""

from __future__ import annotations

import hashlib
import os

import pytest

from sglang_models import load_cases, require_sglang

require_sglang()

from hub_models import hub_environment, publish  # noqa: E402

from hub_mock import MockHub  # noqa: E402
from vllm_models import make_model_pair  # noqa: E402

pytestmark = pytest.mark.slow
REPO = "testorg/tiny"


def test_a_repo_id_loads_the_revision_asked_into_the_download_dir(tmp_path):
    asked, _ = make_model_pair("qwen2", tmp_path / "asked")
    moved, _ = make_model_pair("qwen2", tmp_path / "moved", seed=1)
    download_dir = tmp_path / "download-dir"
    with MockHub() as hub:
        commit = publish(hub, REPO, asked)
        publish(hub, REPO, moved)
        argv = ["--model-path", REPO, "--load-format", "flash", "--revision", commit,
                "--download-dir", str(download_dir)]
        [run] = load_cases([{"argv": argv, "reference": asked}], tmp_path / "run",
                           env=hub_environment(hub, tmp_path / "hf-cache"))
    got = run.results[0]
    assert "error" not in got, (got, run.log[-3000:])
    assert got["loader"] == "FlashModelLoader"
    assert got["equal"], got["differ"]
    assert f"flashtensors: read hf://{REPO}@{commit} (safetensors layout)" in run.log
    weights = (asked / "model.safetensors").read_bytes()
    snapshot = download_dir / "models--testorg--tiny" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == weights
    assert os.path.basename(os.readlink(snapshot / "model.safetensors")) == hashlib.sha256(weights).hexdigest()
