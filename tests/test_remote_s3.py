"""Remote checkpoints on S3: moto's S3 server (a real S3 REST API on loopback, started
by the ``s3`` fixture in conftest.py) with credentials and endpoint from the standard AWS
environment variables. Objects stay small: moto is slow at large range GETs."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from flashtensors import FlashRemoteError, flash

from helpers import assert_same, state_dict
from remote_servers import upload


def state():
    sd = state_dict(1, 5, (40, 32), name="blocks.{i}.w", grow=1)
    sd["norm"] = torch.ones(9, dtype=torch.float16)
    return sd


def test_flash_checkpoint_on_s3(s3, tmp_path):
    c, bucket = s3
    sd = state()
    flash.save_dict(sd, tmp_path / "m")
    upload(c, bucket, tmp_path / "m", "models/m")
    assert_same(flash.load_dict(f"s3://{bucket}/models/m", "cpu"), sd)
    assert flash.verify(f"s3://{bucket}/models/m/") == len(sd)
    targets = {k: torch.zeros_like(v) for k, v in sd.items()}
    flash.load_into(f"s3://{bucket}/models/m", targets)
    assert_same(targets, sd)


def test_safetensors_on_s3_sharded_listed_and_single(s3, tmp_path):
    c, bucket = s3
    sd = state()
    names = list(sd)
    hf = tmp_path / "hf"
    hf.mkdir()
    weight_map = {}
    for i, keys in enumerate((names[:3], names[3:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys}, hf / shard)
        weight_map.update({k: shard for k in keys})
    upload(c, bucket, hf, "listed")  # no index: every *.safetensors, listed
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    upload(c, bucket, hf, "indexed")
    local = flash.load_dict(hf, "cpu")
    assert_same(flash.load_dict(f"s3://{bucket}/indexed", "cpu"), local)
    assert_same(flash.load_dict(f"s3://{bucket}/listed", "cpu"), local)
    single = flash.load_dict(f"s3://{bucket}/indexed/model-00001-of-00002.safetensors", "cpu")
    assert_same(single, flash.load_dict(hf / "model-00001-of-00002.safetensors", "cpu"))


def test_missing_checkpoint_and_missing_data_file(s3, tmp_path):
    c, bucket = s3
    with pytest.raises(FlashRemoteError, match=f"s3://{bucket}/nothing: no checkpoint"):
        flash.load_dict(f"s3://{bucket}/nothing")
    flash.save_dict(state(), tmp_path / "m")
    data = next(f for f in os.listdir(tmp_path / "m") if f.endswith(".flash"))
    os.remove(tmp_path / "m" / data)
    upload(c, bucket, tmp_path / "m", "m")
    with pytest.raises(FlashRemoteError, match=rf"s3://{bucket}/m/{data}: data file missing .*tensor 'blocks.0.w'"):
        flash.load_dict(f"s3://{bucket}/m")


def test_missing_bucket(s3):
    with pytest.raises(FlashRemoteError, match="s3://no-such-bucket-here/m.*HTTP 404.*NoSuchBucket"):
        flash.load_dict("s3://no-such-bucket-here/m")
