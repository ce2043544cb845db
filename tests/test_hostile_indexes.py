"""Hostile indexes, headers and weight indexes within the size caps: each is loaded by a
fresh process, which must load it or fail with a FlashFormatError naming the file, its
peak memory (ru_maxrss, torch and the loaded tensors included) under 1 GB.

The files are built to make a parser spend memory: millions of tiny elements, lists
and objects far longer than any limit, deep nesting, long strings, many files, a
duplicate key at the end of millions of keys. A parser that keeps a record per element
before checking limits needs gigabytes for most of them.
"""

import json
import struct
import subprocess
import sys

import pytest

from flashtensors.formats.flash import MAX_INDEX_BYTES
from flashtensors.formats.index import MAX_FILES, MAX_TENSORS
from flashtensors.formats.safetensors import MAX_HEADER_BYTES, MAX_HF_INDEX_BYTES

PEAK_LIMIT_MB = 1024

# Loads the path in argv[1]; prints how it went and the process's peak memory. The peak
# is VmHWM, the high-water mark of this process's own memory: ru_maxrss would do, but
# Linux carries it across fork and exec, so it would start at the test process's peak.
CHILD = """
import json, sys
from flashtensors import flash
from flashtensors.errors import FlashFormatError
try:
    out = {"loaded": len(flash.load_dict(sys.argv[1]))}
except FlashFormatError as e:
    out = {"error": str(e)}
status = open("/proc/self/status").read()
out["peak_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps(out))
"""


def load_in_child(path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def assert_loaded_or_refused(out: dict, path) -> None:
    """A child's report: peak under the limit; loaded, or refused naming ``path`` in a
    message of reasonable length (never quoting a whole hostile string)."""
    assert out["peak_mb"] < PEAK_LIMIT_MB, out
    if "error" in out:
        assert str(path) in out["error"] and len(out["error"]) < 1000, out["error"][:2000]


def repeat_to(cap: int, head: str, item, tail: str) -> str:
    """``head``, then ``item(i)`` for i = 0, 1, ... joined by commas, then ``tail``:
    as many items as fit in ``cap`` bytes (ASCII). Built in batches, so the test itself
    needs little more memory than the document."""
    chunks, size, i = [head], len(head) + len(tail), 0
    while True:
        batch = [item(j) for j in range(i, i + 10_000)]
        batch_size = sum(len(piece) + 1 for piece in batch)
        if size + batch_size > cap:
            break
        chunks.append(",".join(batch) + ",")
        size, i = size + batch_size, i + len(batch)
    for piece in (item(j) for j in range(i, i + 10_000)):
        if size + len(piece) + 1 > cap:
            break
        chunks.append(piece + ",")
        size += len(piece) + 1
    return "".join(chunks).removesuffix(",") + tail


def times(text: str, n: int) -> str:
    """``text`` n times, comma-separated."""
    return (text + ",") * (n - 1) + text


def nested(cap: int) -> str:
    depth = (cap - 16) // 2
    return "[" * depth + "]" * depth


# --- flash indexes ------------------------------------------------------------------

HEADER = '"format":"flashtensors","version":1,"alignment":4096,"checksum":"crc32c"'
ONE_FILE = '"files":[{"name":"a.flash","size":0}]'


def empty_tensor(i: int) -> str:
    return ('{"name":"%x","dtype":"bool","shape":[0],"file":0,"offset":0,"length":0,"crc32c":"00000000"}' % i)


def many_valid_tensors(cap):
    return repeat_to(cap, "{%s,%s,\"tensors\":[" % (HEADER, ONE_FILE), empty_tensor, "]}")


def tensors_before_the_header(cap):
    # The tensors cannot be checked until the header is read: a second pass.
    return repeat_to(cap, '{"tensors":[', empty_tensor, "],%s,%s}" % (ONE_FILE, HEADER))


def empty_objects(cap):
    return "{%s,%s,\"tensors\":[%s]}" % (HEADER, ONE_FILE, times("{}", (cap - 300) // 3))


def empty_objects_before_the_header(cap):
    return '{"tensors":[%s],%s,%s}' % (times("{}", (cap - 300) // 3), HEADER, ONE_FILE)


def a_shape_of_millions(cap):
    shape = times("1", (cap - 400) // 2)
    return ('{%s,%s,"tensors":[{"name":"x","dtype":"bool","shape":[%s],"file":0,"offset":0,"length":1,'
            '"crc32c":"00000000"}]}' % (HEADER, ONE_FILE, shape))


def too_many_files(cap):
    files = ",".join('{"name":"%x.flash","size":0}' % i for i in range(MAX_FILES + 1))
    return repeat_to(cap, '{%s,"files":[%s],"tensors":[' % (HEADER, files), empty_tensor, "]}")


def files_of_empty_objects(cap):
    return '{%s,"files":[%s],"tensors":[]}' % (HEADER, times("{}", (cap - 300) // 3))


def millions_of_metadata_entries(cap):
    return repeat_to(cap, '{%s,%s,"tensors":[],"metadata":{' % (HEADER, ONE_FILE), lambda i: '"%x":""' % i, "}}")


def a_long_metadata_string(cap):
    return '{%s,%s,"tensors":[],"metadata":{"m":"%s"}}' % (HEADER, ONE_FILE, "x" * (cap - 300))


def a_long_file_name(cap):
    return '{%s,"files":[{"name":"%s.flash","size":0}],"tensors":[]}' % (HEADER, "x" * (cap - 300))


def a_long_tensor_name(cap):
    return ('{%s,%s,"tensors":[{"name":"%s","dtype":"bool","shape":[0],"file":0,"offset":0,"length":0,'
            '"crc32c":"00000000"}]}' % (HEADER, ONE_FILE, "x" * (cap - 400)))


def millions_of_unknown_keys_then_a_duplicate(cap):
    doc = repeat_to(cap - 20, '{%s,%s,"tensors":[],"x":{' % (HEADER, ONE_FILE), lambda i: '"%x":0' % i, "")
    return doc + ',"0":1}}'


def deep_nesting(cap):
    return '{%s,%s,"tensors":[],"x":%s}' % (HEADER, ONE_FILE, nested(cap - 300))


FLASH_CASES = [many_valid_tensors, tensors_before_the_header, empty_objects, empty_objects_before_the_header,
               a_shape_of_millions, too_many_files, files_of_empty_objects, millions_of_metadata_entries,
               a_long_metadata_string, a_long_file_name, a_long_tensor_name, millions_of_unknown_keys_then_a_duplicate,
               deep_nesting]


@pytest.mark.parametrize("make", FLASH_CASES, ids=lambda f: f.__name__)
def test_hostile_flash_index(tmp_path, make):
    doc = make(MAX_INDEX_BYTES).encode()
    assert len(doc) <= MAX_INDEX_BYTES
    (tmp_path / "flash_index.json").write_bytes(doc)
    (tmp_path / "a.flash").write_bytes(b"")
    assert_loaded_or_refused(load_in_child(tmp_path), tmp_path / "flash_index.json")


def test_the_tensor_limit_is_checked_before_a_tensor_is_kept(tmp_path):
    # No valid index of more than MAX_TENSORS tensors fits in MAX_INDEX_BYTES; one that
    # passes the size check only by being read past it still stops at the limit.
    names = [f"{i:x}" for i in range(MAX_TENSORS + 1)]
    doc = '{%s,%s,"tensors":[%s]}' % (HEADER, ONE_FILE, ",".join(
        '{"name":"%s","dtype":"bool","shape":[0],"file":0,"offset":0,"length":0,"crc32c":"00000000"}' % n
        for n in names))
    from flashtensors.errors import FlashFormatError
    from flashtensors.formats.flash import parse_index_bytes

    with pytest.raises(FlashFormatError, match=f"idx: more than {MAX_TENSORS} tensors"):
        parse_index_bytes(doc.encode(), "idx")


# --- safetensors headers ------------------------------------------------------------

def safetensors_file(path, header: str, data: bytes = b"") -> None:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def empty_entry(i: int) -> str:
    return '"%x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i


def st_too_many_tensors(cap):
    return repeat_to(cap, "{", empty_entry, "}")


def long_named_entry(i: int) -> str:
    return '"%0100x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i


def st_many_valid_tensors(cap):
    # As many as fit, all loaded: 630,000 tensors (each loaded tensor costs torch some
    # 500 bytes, so the limit's million would measure torch rather than the parser).
    return repeat_to(cap, "{", long_named_entry, "}")


def st_millions_of_metadata_entries(cap):
    return repeat_to(cap, '{"__metadata__":{', lambda i: '"%x":""' % i, "}}")


def st_a_shape_of_millions(cap):
    return '{"x":{"dtype":"U8","shape":[%s],"data_offsets":[0,1]}}' % times("1", (cap - 100) // 2)


def st_offsets_of_millions(cap):
    return '{"x":{"dtype":"U8","shape":[1],"data_offsets":[%s]}}' % times("0", (cap - 100) // 2)


def st_entries_missing_everything(cap):
    return repeat_to(cap, "{", lambda i: '"%x":{}' % i, "}")


def st_a_duplicate_after_millions(cap):
    return repeat_to(cap - 200, "{", long_named_entry, "") + "," + long_named_entry(0) + "}"


def st_a_long_tensor_name(cap):
    return '{"%s":{"dtype":"U8"}}' % ("x" * (cap - 100))


def st_deep_nesting(cap):
    return '{"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"y":%s}}' % nested(cap - 100)


ST_CASES = [st_too_many_tensors, st_many_valid_tensors, st_millions_of_metadata_entries, st_a_shape_of_millions,
            st_offsets_of_millions, st_entries_missing_everything, st_a_duplicate_after_millions, st_a_long_tensor_name,
            st_deep_nesting]


@pytest.mark.parametrize("make", ST_CASES, ids=lambda f: f.__name__)
def test_hostile_safetensors_header(tmp_path, make):
    header = make(MAX_HEADER_BYTES)
    assert len(header) <= MAX_HEADER_BYTES
    path = tmp_path / "model.safetensors"
    safetensors_file(path, header)
    assert_loaded_or_refused(load_in_child(path), path)


# --- Hugging Face weight indexes ----------------------------------------------------

def hf_millions_of_tensors_in_one_file(cap):
    return repeat_to(cap, '{"weight_map":{', lambda i: '"%x":"model.safetensors"' % i, "}}")


def hf_too_many_files(cap):
    return repeat_to(cap, '{"weight_map":{', lambda i: '"%x":"%x.safetensors"' % (i, i), "}}")


def hf_millions_of_empty_lists(cap):
    return '{"metadata":[%s],"weight_map":{"x":"model.safetensors"}}' % times("[]", (cap - 100) // 3)


def hf_deep_nesting(cap):
    return '{"metadata":%s,"weight_map":{"x":"model.safetensors"}}' % nested(cap - 100)


def hf_a_long_file_name(cap):
    return '{"weight_map":{"x":"%s.safetensors"}}' % ("x" * (cap - 100))


HF_CASES = [hf_millions_of_tensors_in_one_file, hf_too_many_files, hf_millions_of_empty_lists, hf_deep_nesting,
            hf_a_long_file_name]


@pytest.mark.parametrize("make", HF_CASES, ids=lambda f: f.__name__)
def test_hostile_hugging_face_weight_index(tmp_path, make):
    doc = make(MAX_HF_INDEX_BYTES).encode()
    assert len(doc) <= MAX_HF_INDEX_BYTES
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(doc)
    safetensors_file(tmp_path / "model.safetensors", '{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
                     b"\x07")
    assert_loaded_or_refused(load_in_child(tmp_path), index)


@pytest.mark.parametrize("cap, name", [(MAX_INDEX_BYTES, "flash_index.json"),
                                       (MAX_HF_INDEX_BYTES, "model.safetensors.index.json")])
def test_an_index_over_its_cap_is_refused_by_size(tmp_path, cap, name):
    (tmp_path / name).write_bytes(b" " * (cap + 1))
    out = load_in_child(tmp_path)
    assert out["peak_mb"] < PEAK_LIMIT_MB, out
    assert str(tmp_path / name) in out["error"] and str(cap) in out["error"], out


def test_a_header_over_the_cap_is_refused_by_its_length(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * 64)
    out = load_in_child(path)
    assert str(path) in out["error"] and str(MAX_HEADER_BYTES) in out["error"], out
