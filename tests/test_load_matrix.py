"""Every combination of layout x place x {one process, a group} x {load_dict, load_into}
loads what safetensors' ``load_file`` reads, with real servers (nginx, moto's S3) and
real gloo groups of spawned processes; ``verify=True`` passes on good data and raises
FlashChecksumError, on every rank and within 10 s, for one flipped byte in a local file,
a remote object or a cached copy; options that cannot apply are refused by name."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashtensors import FlashChecksumError, FlashError, flash
from flashtensors.checkpoint import open_checkpoint

import matrix_workers
from helpers import save_shards, state_dict
from remote_servers import nginx, point_aws_at, upload

LAYOUTS = {"flash": "flash", "file": "st/model.safetensors", "hf": "hf"}
PLACES = ["local", "http", "s3", "s3-cached"]
METHODS = ["load_dict", "load_into"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_server):
    """The checkpoints on disk, served by nginx and uploaded to moto's S3:
    ``{"root", "url", "bucket", "expected", "expected_file"}``."""
    root = tmp_path_factory.mktemp("matrix")
    sd = state_dict(7, 6, (300, 129), name="layers.{i}.w", grow=37)
    sd.update({"layers.0.b": torch.arange(11, dtype=torch.int16), "emb": torch.randn(50, 8).to(torch.bfloat16),
               "scalar": torch.tensor(1.5), "empty": torch.empty(0, 3)})  # about 1 MB: several pieces
    flash.save_dict(sd, root / "flash")
    (root / "st").mkdir()
    save_file(sd, str(root / "st" / "model.safetensors"))
    save_shards(sd, root / "hf", 2, index=True)
    shutil.copytree(root / "flash", root / "bad-flash")
    with pytest.MonkeyPatch.context() as mp_env:
        point_aws_at(mp_env, s3_server.url)
        from flashtensors.stores.s3 import client

        c, bucket = client(), f"matrix-{os.getpid()}"
        c.create_bucket(Bucket=bucket)
        for name in ("flash", "hf", "st"):
            upload(c, bucket, root / name, name)
        with nginx(root) as server:
            yield {"root": root, "url": server.url, "bucket": bucket, "client": c,
                   "expected": load_file(str(root / "st" / "model.safetensors")),
                   "expected_file": str(root / "st" / "model.safetensors")}


def location(w, layout: str, place: str) -> str:
    rel = LAYOUTS[layout]
    if place == "local":
        return str(w["root"] / rel)
    if place == "http":
        return f"{w['url']}/{rel}"
    return f"s3://{w['bucket']}/{rel}"


def case(w, layout, place, method, cache_dir=None, **options) -> dict:
    if place == "s3-cached":
        options["cache_dir"] = str(cache_dir)
    return {"location": location(w, layout, place), "method": method, "options": options}


def data_gets(s3_server, bucket: str) -> int:
    """Range GETs of data objects moto answered (the small reads of headers are probes)."""
    return sum(1 for method, path, rng in s3_server.requests
               if method == "GET" and path.startswith(f"/{bucket}/") and rng and not rng.startswith("bytes=0-"))


# -- one process ----------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_process(world, s3_server, tmp_path, layout, place, method):
    c = case(world, layout, place, method, cache_dir=tmp_path / "tier")
    matrix_workers.run_case(0, 1, c, world["expected"])
    if place == "s3-cached":
        s3_server.requests.clear()
        matrix_workers.run_case(0, 1, c, world["expected"])  # the second load, from the tier
        assert data_gets(s3_server, world["bucket"]) == 0, s3_server.requests


@pytest.mark.parametrize("place", PLACES)
def test_verify_passes_on_good_data(world, tmp_path, place):
    for method in METHODS:
        matrix_workers.run_case(0, 1, case(world, "flash", place, method, cache_dir=tmp_path, verify=True),
                                world["expected"])


def _flash_data_file(directory) -> tuple:
    """``(path, offset)`` of a byte inside tensor layers.3.w of a local flash checkpoint."""
    ckpt = open_checkpoint(directory)
    t = ckpt.index.tensors["layers.3.w"]
    return ckpt.sources[t.file], t.offset + 1000


def test_verify_catches_a_flipped_byte_in_a_local_file(world):
    matrix_workers.flip_byte(*_flash_data_file(world["root"] / "bad-flash"))
    try:
        for method in METHODS:
            with pytest.raises(FlashChecksumError, match="layers.3.w"):
                matrix_workers.run_case(0, 1, {"location": str(world["root"] / "bad-flash"), "method": method,
                                               "options": {"verify": True}}, world["expected"])
    finally:
        matrix_workers.flip_byte(*_flash_data_file(world["root"] / "bad-flash"))


def test_verify_catches_a_flipped_byte_in_a_remote_object(world):
    path, offset = _flash_data_file(world["root"] / "bad-flash")
    matrix_workers.flip_byte(path, offset)
    upload(world["client"], world["bucket"], world["root"] / "bad-flash", "bad-flash")
    try:
        for url in (f"{world['url']}/bad-flash", f"s3://{world['bucket']}/bad-flash"):
            with pytest.raises(FlashChecksumError, match="layers.3.w"):
                flash.load_dict(url, verify=True)
    finally:
        matrix_workers.flip_byte(path, offset)


def test_verify_catches_a_flipped_byte_in_a_cached_copy(world, tmp_path):
    url = f"s3://{world['bucket']}/flash"
    flash.load_dict(url, cache_dir=tmp_path)
    (copy,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f.endswith(".flash")]
    t = open_checkpoint(world["root"] / "flash").index.tensors["layers.3.w"]
    matrix_workers.flip_byte(copy, t.offset + 1000)
    with pytest.raises(FlashChecksumError, match="layers.3.w"):
        flash.load_dict(url, cache_dir=tmp_path, verify=True)


# -- options that cannot apply -----------------------------------------------------

@pytest.mark.parametrize("layout", ["file", "hf"])
@pytest.mark.parametrize("place", ["local", "http"])
def test_verify_on_safetensors_is_refused_by_name(world, layout, place):
    with pytest.raises(FlashError, match="verify=True.*no checksums"):
        flash.load_dict(location(world, layout, place), verify=True)
    with pytest.raises(FlashError, match="verify=True.*no checksums"):
        flash.load_into(location(world, layout, place), {}, verify=True)


def test_cache_dir_for_a_local_checkpoint_is_refused_by_name(world, tmp_path):
    with pytest.raises(FlashError, match="cache_dir= is the local tier of remote checkpoints"):
        flash.load_dict(world["root"] / "flash", cache_dir=tmp_path)


@pytest.mark.parametrize("other", [{"verify": True}, {"group": "a group"}, {"remote": True}])
def test_a_named_server_with_what_it_cannot_serve_is_refused_by_name(world, tmp_path, other):
    where = f"{world['url']}/flash" if other.pop("remote", False) else world["root"] / "flash"
    with pytest.raises(FlashError, match="server= .*cannot be combined with"):
        flash.load_dict(where, server=str(tmp_path / "sock"), **other)


# -- a group of two ranks ------------------------------------------------------------

def run_group(w, cases, world_size=2) -> dict:
    return matrix_workers.run_cases(w["root"], w["expected_file"], cases, world_size)


def test_a_group_of_two(world, s3_server, tmp_path):
    cases, labels = [], []
    for layout in LAYOUTS:
        for place in PLACES:
            for method in METHODS:
                tier = tmp_path / f"tier-{layout}-{method}"
                c = case(world, layout, place, method, cache_dir=tier)
                cases.append(c)
                labels.append((layout, place, method, "first"))
                if place == "s3-cached":
                    cases.append(c)
                    labels.append((layout, place, method, "second"))
    for place in PLACES:
        for method in METHODS:
            cases.append(case(world, "flash", place, method, cache_dir=tmp_path / "tier-verify", verify=True))
            labels.append(("flash", place, method, "verify"))
    reports = run_group(world, cases)
    failures = [(label, rank, reports[rank][i]) for i, label in enumerate(labels) for rank in reports
                if reports[rank][i][0] != "ok"]
    assert not failures, failures
    # The tier was filled by the group (one writer) and used: every cached directory holds
    # complete copies of the layout's data files.
    for layout in LAYOUTS:
        tier = tmp_path / f"tier-{layout}-load_dict"
        copies = [f for _, _, files in os.walk(tier) for f in files if f.endswith((".flash", ".safetensors"))]
        assert copies, layout


def test_a_group_raises_the_same_checksum_error_on_every_rank_within_10_s(world, tmp_path):
    url = f"s3://{world['bucket']}/flash"
    flash.load_dict(url, cache_dir=tmp_path / "tier")  # a cached copy to corrupt
    (copy,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "tier") for f in files
               if f.endswith(".flash")]
    local_file, offset = _flash_data_file(world["root"] / "bad-flash")
    cases = [
        {"location": str(world["root"] / "bad-flash"), "method": "load_dict", "options": {"verify": True},
         "before": (local_file, offset)},                                           # a local file
        {"location": f"{world['url']}/bad-flash", "method": "load_into", "options": {"verify": True}},  # remote
        {"location": url, "method": "load_dict", "options": {"verify": True, "cache_dir": str(tmp_path / "tier")},
         "before": (copy, offset)},                                                 # a cached copy
    ]
    try:
        reports = run_group(world, cases)
    finally:
        matrix_workers.flip_byte(local_file, offset)
    for i in range(len(cases)):
        messages = {reports[rank][i][0] for rank in reports}
        assert len(messages) == 1, messages  # the same error on every rank
        (message,) = messages
        assert message.startswith("FlashChecksumError") and "layers.3.w" in message, message
        assert all(reports[rank][i][1] < 10 for rank in reports), [reports[r][i] for r in reports]


@pytest.mark.parametrize("ranks", [2, 4])
def test_a_group_reads_each_byte_once(world, tmp_path, ranks):
    """Counted where it cannot be confused with anything else: in nginx's access log."""
    log = tmp_path / "access.log"
    with nginx(world["root"], access_log=log) as server:
        for layout in ("flash", "hf"):
            log.write_text("")
            reports = run_group(world, [{"location": f"{server.url}/{LAYOUTS[layout]}", "method": "load_dict"}],
                                world_size=ranks)
            assert all(r[0][0] == "ok" for r in reports.values()), reports
            served = sum(int(line.split()[-1]) for line in log.read_text().splitlines()
                         if line.split()[1].endswith((".flash", ".safetensors")) and line.split()[2] != "bytes=0-0")
            data = sum(os.path.getsize(p) for p in open_checkpoint(world["root"] / LAYOUTS[layout]).sources)
            # Every data byte once; the probes of safetensors headers (at most 256 KiB per
            # file, per rank) come on top.
            assert data * 0.9 <= served <= data + ranks * 2 * (256 << 10), (layout, served, data)
