"""Models by name: Hugging Face Hub locations (``org/name``, ``hf://org/name[@revision]``)
loaded from the mock Hub on loopback (tests/support/hub_mock.py: the Hub's API, resolve URLs
redirected to a signed CDN origin), as a user would, with the Hub's cache as their local
tier; checked against safetensors' own ``load_file`` and huggingface_hub itself."""

import json
import os

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load, save

from flashtensors import FlashError, FlashRemoteError, flash, reading
from flashtensors.formats.safetensors import HEADER_PROBE_BYTES

from helpers import assert_same, flashtensors
from hub_mock import TOKEN, MockHub
from processes import kill_when


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The mock Hub, with huggingface_hub's settings (in this process and in the commands a
    test runs) pointing at it and at a fresh cache, and no token."""
    with MockHub() as h:
        cache = tmp_path / "hf-cache"
        for name, value in (("HF_ENDPOINT", h.url), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_DISABLE_XET", "1"),
                            ("HF_TOKEN_PATH", str(tmp_path / "no-token")), ("HF_HUB_DISABLE_TELEMETRY", "1")):
            monkeypatch.setenv(name, value)
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FLASHTENSORS_CACHE_DIR"):
            monkeypatch.delenv(name, raising=False)
        # huggingface_hub's file URLs start from this template, made from HF_ENDPOINT when it was imported
        template = constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, h.url, 1)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "ENDPOINT", h.url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        h.cache = cache
        yield h


def tensors(seed: int, rows: int = 64) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {f"model.layers.{i}.w": torch.randn(rows + i, 48, generator=g) for i in range(4)}
    sd["model.norm"] = torch.rand(48, generator=g).to(torch.bfloat16)
    return sd


def sharded(sd: dict) -> dict:
    """A Hugging Face model's files: two safetensors shards, their index, a config."""
    names = list(sd)
    files, weight_map = {}, {}
    for i, keys in enumerate((names[:3], names[3:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        files[shard] = save({k: sd[k] for k in keys})
        weight_map.update({k: shard for k in keys})
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = b'{"model_type": "tiny"}'
    return files


def by_load_file(files: dict) -> dict:
    """What safetensors' own loader gives for a commit's weight files."""
    out = {}
    for name, data in sorted(files.items()):
        if name.endswith(".safetensors"):
            out.update(load(data))
    return out


def same(loaded: dict, expected: dict):
    assert_same(dict(sorted(loaded.items())), dict(sorted(expected.items())))


def test_the_mock_hub_serves_huggingface_hub(hub, tmp_path):
    from huggingface_hub import snapshot_download

    files = sharded(tensors(0))
    sha = hub.commit("org/tiny", files)
    path = snapshot_download("org/tiny", cache_dir=tmp_path / "hh", endpoint=hub.url)
    assert os.path.basename(path) == sha
    for name, data in files.items():
        assert open(os.path.join(path, name), "rb").read() == data
    assert hub.counts["cdn"] == 2  # the weights came from the CDN, through the resolve redirects
    assert not any(auth for kind, *_, auth in hub.log if kind == "cdn")


def test_repo_id_and_hf_urls_load_as_load_file(hub):
    files = sharded(tensors(1))
    sha = hub.commit("org/tiny", files)
    expected = by_load_file(files)
    for location in ("org/tiny", "hf://org/tiny", f"hf://org/tiny@{sha}", "hf://org/tiny@main"):
        same(flash.load_dict(location, "cpu"), expected)


def test_a_moved_branch_and_its_old_commit_each_give_their_own_tensors(hub):
    old_files, new_files = sharded(tensors(2)), sharded(tensors(3))
    old = hub.commit("org/tiny", old_files)
    same(flash.load_dict("org/tiny"), by_load_file(old_files))
    new = hub.commit("org/tiny", new_files)
    same(flash.load_dict("org/tiny"), by_load_file(new_files))
    same(flash.load_dict(f"hf://org/tiny@{old}"), by_load_file(old_files))
    same(flash.load_dict(f"hf://org/tiny@{new}"), by_load_file(new_files))
    refs = hub.cache / "models--org--tiny" / "refs" / "main"
    assert refs.read_text() == new


def test_the_second_load_reads_the_cache_and_huggingface_hub_finds_it(hub, monkeypatch):
    from huggingface_hub import snapshot_download

    files = sharded(tensors(4))
    sha = hub.commit("org/tiny", files)
    expected = by_load_file(files)
    same(flash.load_dict("org/tiny"), expected)
    snapshot = hub.cache / "models--org--tiny" / "snapshots" / sha
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        link = snapshot / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.read_bytes() == files[name]
        assert os.path.basename(os.readlink(link)) == __import__("hashlib").sha256(files[name]).hexdigest()
    assert not [p for p in (hub.cache / "models--org--tiny" / "blobs").iterdir() if p.name.endswith(".part")]

    hub.reset_counts()
    same(flash.load_dict("org/tiny"), expected)
    assert hub.data_requests() == 0, hub.log
    assert hub.counts["api"] == 1  # the branch asked once: which commit it names now

    hub.reset_counts()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    same(flash.load_dict("org/tiny"), expected)
    same(flash.load_dict(f"hf://org/tiny@{sha}"), expected)
    assert hub.log == []
    found = snapshot_download("org/tiny", cache_dir=hub.cache, local_files_only=True)
    assert os.path.basename(found) == sha
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert open(os.path.join(found, name), "rb").read() == files[name]


def test_offline_without_a_cached_snapshot_says_so(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FlashRemoteError, match="HF_HUB_OFFLINE is set and the Hub cache .* holds no snapshot"):
        flash.load_dict("org/tiny")
    assert hub.log == []


def test_cache_dir_chooses_another_place(hub, tmp_path, monkeypatch):
    files = sharded(tensors(5))
    sha = hub.commit("org/tiny", files)
    same(flash.load_dict("hf://org/tiny", cache_dir=tmp_path / "elsewhere"), by_load_file(files))
    assert (tmp_path / "elsewhere" / "models--org--tiny" / "snapshots" / sha / "model-00001-of-00002.safetensors"
            ).is_file()
    assert not hub.cache.exists()
    monkeypatch.setenv("FLASHTENSORS_CACHE_DIR", str(tmp_path / "tier"))  # the other stores' tier, not the Hub's
    same(flash.load_dict("hf://org/tiny"), by_load_file(files))
    assert (hub.cache / "models--org--tiny" / "snapshots" / sha / "model-00001-of-00002.safetensors").is_file()
    assert not (tmp_path / "tier").exists()


def test_resolve_requests_per_load_stay_within_the_files_read(hub, monkeypatch):
    sd = tensors(6)
    names = list(sd)
    files, weight_map = {}, {}
    for i, name in enumerate(names):  # five shards, each header read and each read in many pieces
        shard = f"model-0000{i + 1}-of-0000{len(names)}.safetensors"
        files[shard] = save({name: sd[name]})
        weight_map[name] = shard
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    hub.commit("org/tiny", files)
    monkeypatch.setattr(reading, "CHUNK_BYTES", 4096)
    same(flash.load_dict("org/tiny", cache_dir=False, connections=4), by_load_file(files))
    assert hub.counts["cdn"] > 2 * len(names)  # many pieces per file...
    assert hub.counts["resolve"] <= len(files) + 3, hub.log  # ...and the Hub asked about each file about once


def test_a_failed_load_leaves_nothing_in_the_cache(hub):
    files = sharded(tensors(7))
    hub.commit("org/tiny", files)
    hub.cdn_status = 404  # every CDN answer refused: the data reads fail
    with pytest.raises(FlashRemoteError):
        flash.load_dict("org/tiny", timeout=3)
    blobs = hub.cache / "models--org--tiny" / "blobs"
    assert not blobs.exists() or not list(blobs.iterdir())
    assert not (hub.cache / "models--org--tiny" / "snapshots").exists() or not list(
        (hub.cache / "models--org--tiny" / "snapshots").rglob("*.safetensors"))


def test_a_gated_repo_loads_with_a_token_and_names_itself_without(hub, monkeypatch):
    files = sharded(tensors(8))
    hub.commit("org/gated", files, gated=True)
    with pytest.raises(FlashRemoteError, match="org/gated is gated, and no token was sent: set HF_TOKEN"):
        flash.load_dict("org/gated")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    same(flash.load_dict("org/gated"), by_load_file(files))
    assert not any(auth for kind, *_, auth in hub.log if kind == "cdn")  # the token never left the Hub's origin


def test_a_missing_repo_and_revision_are_named(hub):
    hub.commit("org/tiny", sharded(tensors(9)))
    with pytest.raises(FlashRemoteError, match=r"^hf://org/nope@main: the Hub .* has no repository org/nope"):
        flash.load_dict("hf://org/nope")
    with pytest.raises(FlashRemoteError, match=r"^org/nope: no such local file or directory, and as a Hub repo ID: "
                                               r"hf://org/nope@main: the Hub .* has no repository org/nope"):
        flash.load_dict("org/nope")
    with pytest.raises(FlashRemoteError, match="the repository org/tiny has no revision 'v9'"):
        flash.load_dict("hf://org/tiny@v9")


def test_429s_are_waited_out(hub):
    files = sharded(tensors(10))
    hub.commit("org/tiny", files)
    hub.throttle(2, retry_after="1")
    same(flash.load_dict("org/tiny", cache_dir=False), by_load_file(files))
    assert hub.counts["429"] == 2


def test_a_retry_after_beyond_the_timeout_fails_at_once_saying_so(hub):
    hub.commit("org/tiny", sharded(tensors(11)))
    hub.throttle(1, retry_after="600")
    with pytest.raises(FlashRemoteError, match="HTTP 429 .*Retry-After of 600 s is past the 5 s timeout"):
        flash.load_dict("org/tiny", timeout=5)


def test_an_unregistered_scheme_is_refused_by_name(hub):
    with pytest.raises(FlashError, match="gs://bucket/m: no store for scheme 'gs', registered: hf, http, https, s3"):
        flash.load_dict("gs://bucket/m")
    r = flashtensors("info", "gs://bucket/m")
    assert r.returncode != 0 and "no store for scheme 'gs'" in r.stderr


def test_a_local_directory_named_like_a_repo_wins(hub, tmp_path, monkeypatch):
    hub.commit("org/tiny", sharded(tensors(12)))
    local = tensors(13)
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    (tmp_path / "org" / "tiny" / "model.safetensors").write_bytes(save(local))
    monkeypatch.chdir(tmp_path)
    same(flash.load_dict("org/tiny"), local)
    assert hub.log == []


def test_the_commands_take_hub_locations(hub, tmp_path):
    files = sharded(tensors(14))
    files["tokenizer.json"] = b'{"version": "1.0"}'
    sha = hub.commit("org/tiny", files)
    r = flashtensors("fetch", f"hf://org/tiny@{sha}")
    assert r.returncode == 0, r.stderr
    snapshot = r.stdout.strip()
    assert snapshot == str(hub.cache / "models--org--tiny" / "snapshots" / sha)
    for name in ("config.json", "tokenizer.json"):
        assert open(os.path.join(snapshot, name), "rb").read() == files[name]
    assert not os.path.exists(os.path.join(snapshot, "model-00001-of-00002.safetensors"))  # no weights fetched
    r = flashtensors("info", "hf://org/tiny")
    assert r.returncode == 0, r.stderr
    assert "model.layers.3.w" in r.stdout
    r = flashtensors("convert", "org/tiny", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    same(flash.load_dict(tmp_path / "out"), by_load_file(files))
    assert (tmp_path / "out" / "config.json").read_bytes() == files["config.json"]


def test_bad_hub_locations_are_named(hub):
    with pytest.raises(FlashError, match="not a Hugging Face Hub location"):
        flash.load_dict("hf://org/tiny@")
    with pytest.raises(FlashError, match="not a Hugging Face Hub location"):
        flash.load_dict("hf://just-a-name")


def test_a_flash_checkpoint_on_the_hub_loads_verified_online_and_offline(hub, tmp_path, monkeypatch):
    sd = tensors(15)
    flash.save_dict(sd, tmp_path / "flash")
    files = {p.name: p.read_bytes() for p in (tmp_path / "flash").iterdir()}
    hub.commit("org/flash", files)
    assert flash.is_checkpoint("org/flash")
    same(flash.load_dict("org/flash", verify=True), sd)
    assert flash.verify("hf://org/flash") == len(sd)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_counts()
    same(flash.load_dict("org/flash", verify=True), sd)  # its data files are links into the cache's blobs
    assert hub.log == []


def test_an_unreachable_hub_falls_back_to_the_cached_snapshot(hub, monkeypatch, caplog):
    files = sharded(tensors(16))
    hub.commit("org/tiny", files)
    flash.load_dict("org/tiny")
    from flashtensors.benchmark.nginx import free_port

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    same(flash.load_dict("org/tiny", timeout=5), by_load_file(files))
    assert "the Hub did not answer" in caplog.text
    with pytest.raises(FlashRemoteError, match="hf://org/other@main: .*Connection refused"):
        flash.load_dict("org/other", timeout=5)


def test_a_killed_load_leaves_no_blob_and_no_link(hub):
    """A load killed mid-stream leaves part files only; the next load removes them and
    commits complete blobs and their links."""
    files = sharded(tensors(17, rows=2048))
    sha = hub.commit("org/tiny", files)
    hub.stall_past = HEADER_PROBE_BYTES  # the headers are read, the tensors past them never arrive
    repo = hub.cache / "models--org--tiny"
    code = "from flashtensors import flash; flash.load_dict('org/tiny', timeout=120)"
    kill_when(code, lambda: list(repo.glob("blobs/*.part")))  # once streaming has begun
    assert all(p.name.endswith(".part") for p in (repo / "blobs").iterdir()), list((repo / "blobs").iterdir())
    assert not list(repo.glob("snapshots/*/*")) and not (repo / "refs").exists()
    hub.stall_past = None
    same(flash.load_dict("org/tiny"), by_load_file(files))
    assert not list(repo.glob("blobs/*.part"))
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (repo / "snapshots" / sha / name).read_bytes() == files[name]
