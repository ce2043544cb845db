"""The local tier (``cache_dir=``): what a load streams is kept, a later load of unchanged
objects reads the local copy (no data bytes from the server: counted in nginx's access
log, the fault server's counters and moto's request record), changed objects are fetched
again, and a failed or killed load leaves nothing that looks complete."""

import filecmp
import json
import os
import time

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import FlashRemoteError, flash
from flashtensors.stores.tier import META_SUFFIX, PART_SUFFIX

from helpers import assert_same, mixed_state_dict
from processes import kill_when
from remote_servers import FaultServer, nginx, upload

pytestmark = pytest.mark.usefixtures("small_pieces")


@pytest.fixture
def site(tmp_path):
    """A web root with a flash checkpoint (m/) and a sharded Hugging Face directory (hf/)."""
    root = tmp_path / "www"
    sd = mixed_state_dict()
    flash.save_dict(sd, root / "m")
    write_hf(root / "hf", sd)
    return root, sd


def write_hf(where, sd, mtime=None):
    where.mkdir(parents=True, exist_ok=True)
    names = list(sd)
    shards = {"model-00001-of-00002.safetensors": names[:4], "model-00002-of-00002.safetensors": names[4:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, where / shard)
        weight_map.update({k: shard for k in keys})
        if mtime is not None:
            os.utime(where / shard, (mtime, mtime))
    (where / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def cached_files(cache):
    """Every file under the cache directory, by name (the lock file left out)."""
    return sorted(f for _, _, files in os.walk(cache) for f in files if f != ".lock")


def data_reads(log_path, suffixes=(".flash", ".safetensors")):
    """Requests of data files in an nginx access log that read more than one byte (the
    tier's size-and-ETag requests read one)."""
    out = []
    for line in open(log_path).read().splitlines():
        method, uri, rng, status, sent = line.split(" ")
        if uri.endswith(suffixes) and int(sent) > 1:
            out.append(line)
    return out


@pytest.mark.parametrize("where", ["m", "hf"])
def test_second_load_reads_the_local_copy(site, where, tmp_path):
    root, sd = site
    cache, log = tmp_path / "cache", tmp_path / "access.log"
    with nginx(root, access_log=log) as server:
        first = flash.load_dict(f"{server.url}/{where}", "cpu", cache_dir=cache)
        assert data_reads(log)
        open(log, "w").close()
        second = flash.load_dict(f"{server.url}/{where}", "cpu", cache_dir=cache)
        assert data_reads(log) == []
    assert_same(first, second)
    assert_same(second, sd, ordered=False)
    # Byte for byte the remote files, each with a sidecar naming its size and ETag.
    copies = [f for f in cached_files(cache) if not f.endswith(META_SUFFIX)]
    assert copies and not any(f.endswith(PART_SUFFIX) for f in copies)
    (copy_dir,) = os.listdir(cache)
    for name in copies:
        assert filecmp.cmp(cache / copy_dir / name, root / where / name, shallow=False)
        meta = json.loads((cache / copy_dir / (name + META_SUFFIX)).read_text())
        assert meta["size"] == os.path.getsize(root / where / name) and meta["etag"]


def test_load_into_and_the_environment_default(site, tmp_path, monkeypatch):
    root, sd = site
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLASHTENSORS_CACHE_DIR", str(cache))
    with FaultServer(root) as server:
        targets = {k: torch.zeros_like(v) for k, v in sd.items()}
        flash.load_into(f"{server.url}/m", targets)
        assert_same(targets, sd)
        before = server.faults.requests
        again = {k: torch.zeros_like(v) for k, v in sd.items()}
        flash.load_into(f"{server.url}/m", again)
        assert server.faults.requests == before
        assert_same(again, sd)
        # cache_dir=False: no local tier, whatever the environment says.
        flash.load_dict(f"{server.url}/m", cache_dir=False)
        assert server.faults.requests > before


def test_a_subset_is_not_kept(site, tmp_path):
    """load_into of some tensors reads only parts of a file: no copy of it is kept."""
    root, sd = site
    cache = tmp_path / "cache"
    with FaultServer(root) as server:
        target = {"layers.2.weight": torch.zeros_like(sd["layers.2.weight"])}
        flash.load_into(f"{server.url}/m", target, cache_dir=cache)
        assert_same(target, {"layers.2.weight": sd["layers.2.weight"]})
        assert cached_files(cache) == []
        # Every tensor of the second shard (and none of the first): that shard is kept.
        second = {k: torch.zeros_like(sd[k]) for k in list(sd)[4:]}
        flash.load_into(f"{server.url}/hf", second, cache_dir=cache)
        assert cached_files(cache) == ["model-00002-of-00002.safetensors",
                                       "model-00002-of-00002.safetensors" + META_SUFFIX]


@pytest.fixture
def hf_in_tier(site, tmp_path):
    """The site's hf/ served by nginx, loaded once into a local tier: yields ``(root, sd,
    url, cache, log)``, nginx's access log ``log`` emptied after that load."""
    root, sd = site
    cache, log = tmp_path / "cache", tmp_path / "access.log"
    with nginx(root, access_log=log) as server:
        url = f"{server.url}/hf"
        flash.load_dict(url, cache_dir=cache)
        open(log, "w").close()
        yield root, sd, url, cache, log


def test_a_changed_object_is_fetched_again(hf_in_tier):
    root, sd, url, cache, log = hf_in_tier
    # New values, same sizes; nginx's ETag is mtime and size, so give the files a new mtime.
    changed = {k: v + 1 if v.is_floating_point() else v * 3 for k, v in sd.items()}
    write_hf(root / "hf", changed, mtime=time.time() + 100)
    got = flash.load_dict(url, cache_dir=cache)
    assert_same(got, changed, ordered=False)
    assert {line.split(" ")[1] for line in data_reads(log)} == {
        "/hf/model-00001-of-00002.safetensors", "/hf/model-00002-of-00002.safetensors"}
    # The copies now hold the new objects: a third load reads no data.
    open(log, "w").close()
    assert_same(flash.load_dict(url, cache_dir=cache), got)
    assert data_reads(log) == []


def test_only_the_changed_shard_is_fetched_again(hf_in_tier):
    root, sd, url, cache, log = hf_in_tier
    shard = root / "hf" / "model-00002-of-00002.safetensors"
    keys = list(sd)[4:]
    save_file({k: sd[k] * 2 for k in keys}, shard)
    os.utime(shard, (12345, 12345))
    got = flash.load_dict(url, cache_dir=cache)
    reads = data_reads(log)
    assert reads and [line.split(" ")[1] for line in reads] == ["/hf/model-00002-of-00002.safetensors"] * len(reads)
    assert_same({k: got[k] for k in keys}, {k: sd[k] * 2 for k in keys})


@pytest.mark.parametrize("status", [403, 503])
def test_a_failed_load_keeps_nothing(site, tmp_path, status):
    root, _ = site
    cache = tmp_path / "cache"
    with FaultServer(root) as server:
        server.faults.status_big = status
        with pytest.raises(FlashRemoteError):
            flash.load_dict(f"{server.url}/m", "cpu", cache_dir=cache, timeout=2)
    assert cached_files(cache) == []


def test_a_killed_load_leaves_only_a_part_file(site, tmp_path):
    """A load killed mid-stream leaves a ``.part`` file, never a copy with its final name
    or a sidecar; the next load removes it and keeps a complete copy."""
    root, sd = site
    cache = tmp_path / "cache"
    with FaultServer(root) as server:
        server.faults.stall_big = True
        code = ("from flashtensors import flash; import sys; "
                f"flash.load_dict({server.url + '/m'!r}, cache_dir={str(cache)!r}, timeout=120)")
        kill_when(code, lambda: any(f.endswith(PART_SUFFIX) for f in cached_files(cache)))  # streaming began
        left = cached_files(cache)
        assert len(left) == 1 and left[0].endswith(PART_SUFFIX)
        server.faults.stall_big = False
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", cache_dir=cache), sd)
    left = cached_files(cache)
    assert not any(f.endswith(PART_SUFFIX) for f in left)
    assert len(left) == 2 and any(f.endswith(META_SUFFIX) for f in left)


def test_an_unusable_cache_dir_does_not_fail_the_load(site, tmp_path, caplog):
    root, sd = site
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with FaultServer(root) as server:
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", cache_dir=not_a_dir), sd)
    assert "not keeping a local copy" in caplog.text


def test_s3_second_load_reads_the_local_copy(s3, s3_server, tmp_path):
    c, bucket = s3
    sd = mixed_state_dict()
    changed = {k: v + 1 if v.is_floating_point() else v * 3 for k, v in sd.items()}
    key = "models/m/model.safetensors"
    cache = tmp_path / "cache"
    url = f"s3://{bucket}/models/m"
    for want in (sd, changed):  # then a new object under the same key (a new ETag): fetched again
        save_file(want, tmp_path / "model.safetensors")
        c.put_object(Bucket=bucket, Key=key, Body=(tmp_path / "model.safetensors").read_bytes())
        for reads_data in (True, False):  # the first load reads the object, the second the local copy
            s3_server.requests.clear()
            assert_same(flash.load_dict(url, "cpu", cache_dir=cache), want, ordered=False)
            data_gets = [r for r in s3_server.requests if r[0] == "GET" and r[1].endswith(key)]
            assert bool(data_gets) == reads_data, data_gets


def test_s3_flash_checkpoint_cached(s3, s3_server, tmp_path):
    c, bucket = s3
    sd = mixed_state_dict()
    flash.save_dict(sd, tmp_path / "m")
    upload(c, bucket, tmp_path / "m", "m")
    cache = tmp_path / "cache"
    flash.load_dict(f"s3://{bucket}/m", cache_dir=cache)
    s3_server.requests.clear()
    targets = {k: torch.zeros_like(v) for k, v in sd.items()}
    flash.load_into(f"s3://{bucket}/m", targets, cache_dir=cache)
    assert_same(targets, sd)
    assert not [r for r in s3_server.requests if r[0] == "GET" and r[1].endswith(".flash")]


def test_a_directory_that_cannot_be_fsynced_still_keeps_copies(site, tmp_path, monkeypatch, caplog):
    # FUSE and network filesystems answer a directory fsync with EINVAL: the copies are
    # kept all the same (and a save there succeeds), as writer and tier share one fsync_dir.
    import errno
    import stat as stat_module

    real_fsync = os.fsync

    def fsync(fd):
        if stat_module.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root, sd = site
    cache = tmp_path / "cache"
    with FaultServer(root) as server:
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", cache_dir=cache), sd)
        reads = len(server.faults.big_reads)
        assert reads
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", cache_dir=cache), sd)
        assert len(server.faults.big_reads) == reads  # the second load read the kept copy
    assert "not keeping a local copy" not in caplog.text
    assert [f for f in cached_files(cache) if f.endswith(META_SUFFIX)]
    flash.save_dict(sd, tmp_path / "saved")
    assert_same(flash.load_dict(tmp_path / "saved"), sd)
