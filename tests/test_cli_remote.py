"""``flashtensors convert`` from and to URLs and ``flashtensors info URL``, run as real
commands against moto's S3 server and nginx on loopback."""

import json

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import FlashError, FlashRemoteError, flash, reading
from flashtensors.convert.upload import upload_checkpoint

from helpers import assert_same, flashtensors, state_dict
from remote_servers import nginx, upload


def state():
    sd = state_dict(3, 4, (32, 16), name="model.layers.{i}.w", grow=1)
    sd["model.norm"] = torch.ones(7, dtype=torch.float16)
    return sd


def hf_dir(where, sd):
    """A sharded Hugging Face directory with a config and a tokenizer file."""
    where.mkdir(parents=True)
    names = list(sd)
    weight_map = {}
    for i, keys in enumerate((names[:2], names[2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys}, where / shard)
        weight_map.update({k: shard for k in keys})
    (where / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (where / "config.json").write_text('{"model_type": "tiny"}')
    (where / "tokenizer.json").write_text('{"version": "1.0"}')
    return where


def same_values(loaded, sd):
    assert_same({k: loaded[k] for k in sd}, sd)


def test_convert_from_s3(s3, tmp_path):
    c, bucket = s3
    sd = state()
    upload(c, bucket, hf_dir(tmp_path / "hf", sd), "hf/tiny")
    r = flashtensors("convert", f"s3://{bucket}/hf/tiny", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "copied 2 files" in r.stdout
    same_values(flash.load_dict(tmp_path / "out"), sd)
    assert flash.is_checkpoint(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "tiny"}'
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert not list((tmp_path / "out").glob("*.safetensors*"))


def test_convert_from_a_web_server_with_a_cast(tmp_path):
    sd = state()
    root = tmp_path / "www"
    hf_dir(root / "hf", sd)
    with nginx(root) as server:
        r = flashtensors("convert", f"{server.url}/hf", tmp_path / "out", "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    loaded = flash.load_dict(tmp_path / "out")
    assert_same({k: loaded[k] for k in sd}, {k: v.to(torch.bfloat16) for k, v in sd.items()})
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer.json").exists()


def test_convert_a_remote_flash_checkpoint_keeps_ties(s3, tmp_path):
    c, bucket = s3
    w = torch.randn(10, 4)
    flash.save_dict({"emb": w, "head": w, "x": torch.randn(3)}, tmp_path / "m")
    upload(c, bucket, tmp_path / "m", "m")
    r = flashtensors("convert", f"s3://{bucket}/m", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    out = flash.load_dict(tmp_path / "out")
    assert torch.equal(out["emb"], w) and out["emb"].data_ptr() == out["head"].data_ptr()


def test_upload_then_load_and_info(s3, tmp_path):
    c, bucket = s3
    sd = state()
    flash.save_dict(sd, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{}")
    url = f"s3://{bucket}/flash/tiny"
    r = flashtensors("convert", tmp_path / "m", url)
    assert r.returncode == 0, r.stderr
    assert "uploaded 5 tensors" in r.stdout and "1 other file" in r.stdout
    assert_same(flash.load_dict(url), sd)
    assert c.get_object(Bucket=bucket, Key="flash/tiny/config.json")["Body"].read() == b"{}"
    info = flashtensors("info", url, "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["path"] == url and summary["format"] == "flash" and len(summary["tensors"]) == 5
    # A second upload needs --overwrite; it replaces the checkpoint and removes the old data files.
    again = flashtensors("convert", tmp_path / "m", url)
    assert again.returncode == 1 and "already there; pass --overwrite" in again.stderr
    changed = {k: v * 2 for k, v in sd.items()}
    flash.save_dict(changed, tmp_path / "m", overwrite=True)
    r = flashtensors("convert", tmp_path / "m", url, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "deleted 1 data file" in r.stdout
    assert_same(flash.load_dict(url), changed)


def test_upload_of_a_hugging_face_directory_converts_it_first(s3, tmp_path):
    c, bucket = s3
    sd = state()
    r = flashtensors("convert", hf_dir(tmp_path / "hf", sd), f"s3://{bucket}/up")
    assert r.returncode == 0, r.stderr
    same_values(flash.load_dict(f"s3://{bucket}/up"), sd)
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="up/")["Contents"]}
    assert {"up/config.json", "up/tokenizer.json", "up/flash_index.json"} <= keys
    assert not any(k.endswith(".safetensors") for k in keys)


def test_multipart_upload_and_a_failed_upload_is_no_checkpoint(s3, tmp_path, monkeypatch):
    c, bucket = s3
    monkeypatch.setattr(reading, "CHUNK_BYTES", 4 << 20)  # moto is slow at many range GETs
    sd = {"big": torch.randn(3 << 20), "small": torch.randn(5)}  # a 12 MiB data file: 3 parts of 5 MiB
    flash.save_dict(sd, tmp_path / "m")
    sent = []

    def fail_after_first_part(n):
        sent.append(n)
        raise OSError("the network went away")

    with pytest.raises(OSError, match="network went away"):
        upload_checkpoint(tmp_path / "m", f"s3://{bucket}/m", part_bytes=5 << 20, threads=1,
                          progress=fail_after_first_part)
    assert sent == [5 << 20]
    with pytest.raises(FlashRemoteError, match="no checkpoint"):
        flash.load_dict(f"s3://{bucket}/m")
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted

    result = upload_checkpoint(tmp_path / "m", f"s3://{bucket}/m", part_bytes=5 << 20, progress=sent.append)
    assert sum(sent[1:]) == result.data_bytes and len(sent[1:]) == 3
    assert_same(flash.load_dict(f"s3://{bucket}/m"), sd)


def test_upload_refuses_a_web_server(tmp_path):
    flash.save_dict(state(), tmp_path / "m")
    with pytest.raises(FlashError, match="s3:// URLs only"):
        upload_checkpoint(tmp_path / "m", "http://127.0.0.1:1/m")


def test_convert_from_a_missing_url_names_it(s3, tmp_path):
    _, bucket = s3
    r = flashtensors("convert", f"s3://{bucket}/nothing", tmp_path / "out")
    assert r.returncode == 1 and f"s3://{bucket}/nothing: no checkpoint" in r.stderr
    assert not (tmp_path / "out").exists()


def test_fetch_gets_the_config_and_tokenizer_but_no_weights(s3, tmp_path, monkeypatch):
    c, bucket = s3
    upload(c, bucket, hf_dir(tmp_path / "hf", state()), "hf/tiny")
    r = flashtensors("fetch", f"s3://{bucket}/hf/tiny", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'm'}\n"  # the directory alone, for $(flashtensors fetch URL)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "tokenizer.json"]
    assert f"""'{{"weights": "s3://{bucket}/hf/tiny"}}'""" in r.stderr
    # Without DIR: a directory of its own under the user's cache, named after the model.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    r = flashtensors("fetch", f"s3://{bucket}/hf/tiny")
    assert r.returncode == 0, r.stderr
    where = r.stdout.strip()
    assert where.startswith(f"{tmp_path / 'xdg'}/flashtensors/models/tiny-")
    assert json.loads(open(f"{where}/config.json").read()) == {"model_type": "tiny"}


def test_fetch_from_a_web_server_asks_for_the_usual_names(tmp_path):
    from remote_servers import FaultServer

    hf_dir(tmp_path / "www" / "hf", state())
    with FaultServer(tmp_path / "www") as server:
        r = flashtensors("fetch", f"{server.url}/hf", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "tokenizer.json"]


def test_fetch_errors(s3, tmp_path):
    c, bucket = s3
    c.put_object(Bucket=bucket, Key="nocfg/model.safetensors", Body=b"x")
    r = flashtensors("fetch", f"s3://{bucket}/nocfg", tmp_path / "m")
    assert r.returncode == 1
    assert f"s3://{bucket}/nocfg/config.json: not found, so s3://{bucket}/nocfg is not a Hugging Face" in r.stderr
    assert not (tmp_path / "m").exists()
    r = flashtensors("fetch", str(tmp_path), tmp_path / "m")
    assert r.returncode == 1 and "not a URL" in r.stderr
