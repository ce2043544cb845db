"""transformers' ``from_pretrained("org/name")`` with the patch on: a model named by Hub repo
ID, served by the mock Hub on loopback (tests/support/hub_mock.py), has its weights streamed by
flashtensors from ``hf://org/name@revision`` into the Hub cache; transformers fetches the
config itself and never reads (or downloads) a weight file. Each load is compared bit for
bit with an unpatched load of the same weights."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from hub_models import hub_in_this_process, publish  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hub_mock import MockHub  # noqa: E402
from model_checks import SafetensorsReads, assert_same_model, patched_transformers  # noqa: E402
from tiny_models import make_model_dir  # noqa: E402

REPO = "testorg/tiny"


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    """The mock Hub with two commits of REPO (other weights on main now); ``.dirs`` holds
    each commit's files as a local directory. One for the module: transformers remembers
    the commits it saw in this process."""
    root = tmp_path_factory.mktemp("transformers-hub")
    old = make_model_dir("qwen2", root / "old", tokenizer=False)
    new = make_model_dir("qwen2", root / "new", seed=1, tokenizer=False)
    with MockHub() as h:
        h.dirs = {publish(h, REPO, old): old, publish(h, REPO, new): new}
        yield h


@pytest.fixture
def hub(mock, tmp_path):
    """The mock Hub, with this process's huggingface_hub pointed at it and an empty Hub cache."""
    mock.cache = tmp_path / "hf-cache"
    mock.reset_counts()
    with hub_in_this_process(mock, mock.cache), patched_transformers():
        yield mock


def cdn_reads(hub) -> int:
    return sum(1 for kind, method, *_ in hub.log if kind == "cdn" and method == "GET")


@pytest.mark.parametrize("at", ["main", "the older commit"])
def test_from_pretrained_streams_a_repo_id_through_flashtensors(hub, at):
    older, newer = list(hub.dirs)
    revision = {"main": None, "the older commit": older}[at]
    with SafetensorsReads() as reads:
        model = AutoModelForCausalLM.from_pretrained(REPO, revision=revision)
    assert reads.by_transformers == []
    assert reads.by_flashtensors == [f"hf://{REPO}@{revision or 'main'}"]
    assert cdn_reads(hub) > 0  # the weights came from the CDN, by range
    from flashtensors.integrations import transformers as flash_tf

    flash_tf.unpatch()
    expected = AutoModelForCausalLM.from_pretrained(hub.dirs[revision or newer])
    assert_same_model(model, expected)
    snapshot = hub.cache / "models--testorg--tiny" / "snapshots" / (revision or newer)
    weights = hub.dirs[revision or newer] / "model.safetensors"
    assert (snapshot / "model.safetensors").read_bytes() == weights.read_bytes()


def test_an_unpatched_load_finds_the_weights_in_the_cache(hub):
    AutoModelForCausalLM.from_pretrained(REPO)
    hub.reset_counts()
    from flashtensors.integrations import transformers as flash_tf

    flash_tf.unpatch()
    AutoModelForCausalLM.from_pretrained(REPO)
    assert cdn_reads(hub) == 0  # huggingface_hub found the file the patched load streamed


def test_a_repository_of_bin_weights_is_left_to_transformers(hub, tmp_path):
    import torch

    from tiny_models import make_model

    model = make_model("qwen2", seed=2)
    files = {"config.json": model.config.to_json_string().encode()}
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    files["pytorch_model.bin"] = (tmp_path / "pytorch_model.bin").read_bytes()
    hub.commit("testorg/bin-only", files)
    with SafetensorsReads() as reads:
        loaded = AutoModelForCausalLM.from_pretrained("testorg/bin-only")
    assert reads.by_flashtensors == []
    assert_same_model(loaded, model)
