"""Damaged checkpoints raise FlashFormatError naming the file and the tensor."""

import json
import os

import pytest
import torch

from flashtensors import FlashFormatError, flash
from flashtensors.errors import FlashChecksumError
from flashtensors.formats.flash import INDEX_FILENAME


@pytest.fixture
def saved(ckpt):
    flash.save_dict({"first": torch.randn(1000), "second": torch.randn(3000)}, ckpt)
    return ckpt


def _data_file(path):
    (name,) = [f.name for f in flash.read_index(path).files]
    return path / name


def _edit_index(path, fn):
    doc = json.loads((path / INDEX_FILENAME).read_text())
    fn(doc)
    (path / INDEX_FILENAME).write_text(json.dumps(doc))


def test_truncated_data_file(saved):
    data = _data_file(saved)
    os.truncate(data, 4096)
    with pytest.raises(FlashFormatError, match=r"truncated.*'second'") as e:
        flash.load_dict(saved)
    assert data.name in str(e.value)
    with pytest.raises(FlashFormatError, match="truncated"):
        flash.verify(saved)


def test_missing_data_file(saved):
    data = _data_file(saved)
    data.unlink()
    with pytest.raises(FlashFormatError, match=rf"{data.name}.*missing.*'first'"):
        flash.load_dict(saved)


def test_missing_index(tmp_path):
    with pytest.raises(FlashFormatError, match="index file missing"):
        flash.load_dict(tmp_path)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"\xff\xfe", b"[]", b'{"format": "other"}', b"1e999999",
                                     b'{"version": ' + b"9" * 5000 + b"}"])
def test_corrupt_index(saved, garbage):
    (saved / INDEX_FILENAME).write_bytes(garbage)
    with pytest.raises(FlashFormatError, match=INDEX_FILENAME):
        flash.load_dict(saved)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["tensors"][1].update(offset=10**9), "beyond the end"),
    (lambda d: d["tensors"][1].update(dtype="float128"), "unknown dtype"),
    (lambda d: d["tensors"][1].update(shape=[-1]), "invalid shape"),
    (lambda d: d["tensors"][1].update(shape=[2**40, 2**40]), "invalid shape|too large"),
    (lambda d: d["tensors"][1].update(length=4), "does not match"),
    (lambda d: d["tensors"][1].update(offset=4097), "invalid offset"),
    (lambda d: d["tensors"][1].update(file=7), "data file number"),
    (lambda d: d["tensors"][1].update(name="first"), "listed twice"),
    (lambda d: d["tensors"][1].update(crc32c="zz"), "invalid crc32c"),
    (lambda d: d["files"][0].update(name="../../etc/passwd.flash"), "unsafe"),
    (lambda d: d["files"][0].update(name="/etc/x.flash"), "unsafe"),
    (lambda d: d["files"][0].update(size=123), "invalid size"),
    (lambda d: d.update(version=99), "newer than this flashtensors"),
    (lambda d: d.update(alignment=512), "alignment"),
    (lambda d: d.update(metadata={"a": 1}), "metadata"),
])
def test_invalid_index_fields(saved, edit, message):
    _edit_index(saved, edit)
    with pytest.raises(FlashFormatError, match=message):
        flash.load_dict(saved)


def _edit_raw_index(path, fn):
    raw = (path / INDEX_FILENAME).read_bytes()
    (path / INDEX_FILENAME).write_bytes(fn(raw))


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.replace(b'"format":', b'"format":"x","format":', 1), "duplicate key"),
    (lambda raw: raw + b" []", "trailing data"),
    (lambda raw: raw.replace(b'"metadata":{}', b'"metadata":{"k":' + b"[" * 1000 + b"]" * 1000 + b"}"),
     "metadata|nested too deeply"),
    (lambda raw: raw.replace(b'"metadata":{}', b'"extra":' + b"[" * 1000 + b"]" * 1000), "nested too deeply"),
    (lambda raw: raw.replace(b'"version":1', b'"version":1.0'), "version must be an integer"),
    (lambda raw: raw.replace(b'"version":1', b'"version":01'), "leading zero"),
    (lambda raw: raw.replace(b'"alignment":4096', b'"alignment":4096e0'), "alignment"),
    (lambda raw: raw.replace(b'"name":"first"', b'"name":"fir\xc0\xafst"'), "invalid UTF-8"),
    (lambda raw: raw.replace(b'"name":"first"', b'"name":"a\x01b"'), "control character"),
])
def test_invalid_index_json(saved, edit, message):
    """The native parser is strict JSON (RFC 8259), as the spec requires."""
    _edit_raw_index(saved, edit)
    with pytest.raises(FlashFormatError, match=message):
        flash.load_dict(saved)


def test_escaped_names_and_lone_surrogates_read_as_python_json_reads_them(saved):
    # An escaped lone surrogate is not valid UTF-8, but Python's json accepts it: so do we.
    _edit_raw_index(saved, lambda raw: raw.replace(b'"name":"first"', rb'"name":"f\u00efr\ud800st\ud83d\ude00"'))
    names = list(flash.load_dict(saved))
    assert names == ["f\u00efr\ud800st\U0001f600", "second"]


def test_tensor_named_in_field_errors(saved):
    _edit_index(saved, lambda d: d["tensors"][1].update(dtype="float128"))
    with pytest.raises(FlashFormatError, match="'second'"):
        flash.load_dict(saved)


def test_symlink_escaping_the_directory(saved, tmp_path):
    data = _data_file(saved)
    outside = tmp_path / "outside.flash"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(outside)
    with pytest.raises(FlashFormatError, match="outside the checkpoint directory"):
        flash.load_dict(saved)


def test_flipped_byte_is_caught_by_verify(saved):
    data = _data_file(saved)
    raw = bytearray(data.read_bytes())
    raw[4096 + 100] ^= 0x01  # inside "second"
    data.write_bytes(bytes(raw))
    with pytest.raises(FlashChecksumError, match="second") as e:
        flash.verify(saved)
    assert e.value.mismatches == [("second", str(data.resolve()))]
    with pytest.raises(FlashChecksumError):
        flash.load_dict(saved, verify=True)
    flash.load_dict(saved)  # without verify, the bytes load as they are


def test_data_file_replaced_by_directory(saved):
    data = _data_file(saved)
    data.unlink()
    data.mkdir()
    with pytest.raises(FlashFormatError):
        flash.load_dict(saved)


def test_a_fifo_in_place_of_the_index_does_not_hang(tmp_path):
    import os

    os.mkfifo(tmp_path / INDEX_FILENAME)
    with pytest.raises(FlashFormatError, match="not a regular file"):
        flash.load_dict(tmp_path)
