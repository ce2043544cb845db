"""Fuzzing the index and data files: every case must end in a FlashError or a correct load.

CI runs a couple of minutes' worth; set FLASH_FUZZ_EXAMPLES=10000 for the long run
(documented in docs/reliability.md).
"""

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashtensors import FlashError, flash
from flashtensors.formats.flash import INDEX_FILENAME
from flashtensors.formats.index import torch_dtype

EXAMPLES = int(os.environ.get("FLASH_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=not os.environ.get("FLASH_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "orig"
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    flash.save_dict({"w": w, "w_t": w.t(), "b": torch.tensor([1, 2, 3], dtype=torch.int16),
                     "s": torch.tensor(True), "e": torch.empty(0, 3, dtype=torch.bfloat16)}, root)
    return root


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=20)
    | st.sampled_from(["float32", "int16", "bool", "bfloat16", "../x.flash", "/etc/passwd", "a.flash", "crc32c",
                       "flashtensors", "00000000", ".flash", "float4_e2m1fn_x2", "float8_e4m3fnuz",
                       "F4", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "U8", "I16"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


_DELETE = object()


@st.composite
def mutations(draw, doc):
    paths = [p for p, _ in _paths(doc) if p]
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["value", "int", "delete"]))
        if kind == "delete":
            edits.append((path, _DELETE))
        elif kind == "int":
            edits.append((path, draw(st.integers(-1, 2**64) | st.sampled_from([0, 1, 4095, 4096, 8192, 2**48]))))
        else:
            edits.append((path, draw(json_values)))
    return edits


def _check_correct(loaded, index_doc, root):
    """A load that succeeded must match what its (mutated) index says is in the files."""
    tensors = {t["name"]: t for t in index_doc["tensors"]}
    assert list(loaded) == list(tensors)
    files = [f["name"] for f in index_doc["files"]]
    for name, t in loaded.items():
        entry = tensors[name]
        assert t.dtype == torch_dtype(entry["dtype"])
        assert list(t.shape) == entry["shape"]
        if entry.get("strides") is None and t.numel():
            with open(root / files[entry["file"]], "rb") as f:
                f.seek(entry["offset"])
                raw = f.read(entry["length"])
            assert bytes(t.contiguous().view(-1).view(torch.uint8).numpy()) == raw


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def _fresh_copy(original, tmp_path):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(original, root)
    return root


@FUZZ
@given(data=st.data())
def test_mutated_index(original, tmp_path, data):
    root = _fresh_copy(original, tmp_path)
    doc = json.loads((root / INDEX_FILENAME).read_text())
    for path, value in data.draw(mutations(doc)):
        try:
            _set(doc, path, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced the parent
    (root / INDEX_FILENAME).write_text(json.dumps(doc))
    try:
        loaded = flash.load_dict(root)
    except FlashError:
        return
    _check_correct(loaded, doc, root)


@FUZZ
@given(raw=st.binary(max_size=600), cut=st.integers(0, 2000))
def test_garbage_and_truncated_index(original, tmp_path, raw, cut):
    root = _fresh_copy(original, tmp_path)
    text = (root / INDEX_FILENAME).read_bytes()
    for content in (raw, text[:cut], text[:cut] + raw):
        if _same_json(content, text):
            continue  # the intact index (perhaps with trailing whitespace)
        (root / INDEX_FILENAME).write_bytes(content)
        with pytest.raises(FlashError):
            flash.load_dict(root)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 3 * 4096 - 1), st.integers(1, 255)), max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 5 * 4096)))
def test_damaged_data_file(original, tmp_path, flips, truncate):
    root = _fresh_copy(original, tmp_path)
    (name,) = [f.name for f in flash.read_index(root).files]
    raw = bytearray((root / name).read_bytes())
    for pos, xor in flips:
        if pos < len(raw):
            raw[pos] ^= xor
    if truncate is not None:
        raw = raw[:truncate]
    (root / name).write_bytes(bytes(raw))
    try:
        flash.verify(root)
    except FlashError:
        damaged = True
    else:
        damaged = False
    try:
        loaded = flash.load_dict(root)
    except FlashError:
        assert damaged or truncate is not None
        return
    _check_correct(loaded, json.loads((root / INDEX_FILENAME).read_text()), root)


# -- safetensors headers: every case ends in a FlashError, or loads exactly what
# safetensors itself loads from the same file (we are never less strict than it is).

@pytest.fixture(scope="module")
def st_original(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("fuzz-st") / "model.safetensors"
    save_file({"w": torch.arange(24, dtype=torch.float32).reshape(4, 6), "s": torch.tensor(True),
               "b": torch.tensor([1, 2, 3], dtype=torch.int16), "e": torch.empty(0, 3, dtype=torch.bfloat16)},
              str(path))
    return path


def _split_safetensors(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _check_like_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        loaded = flash.load_dict(path)
    except FlashError:
        return
    try:
        want = load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        pytest.fail(f"flashtensors loaded a file safetensors refuses ({e})")
    assert list(sorted(loaded)) == list(sorted(want))
    for name, t in want.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        got = loaded[name].reshape(-1).view(torch.uint8)
        assert bytes(got.numpy()) == bytes(t.reshape(-1).view(torch.uint8).numpy())


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_header(st_original, tmp_path, data):
    header, body = _split_safetensors(st_original.read_bytes())
    for path, value in data.draw(mutations(header)):
        try:
            _set(header, path, value)
        except (KeyError, IndexError, TypeError):
            pass
    raw = json.dumps(header).encode()
    target = tmp_path / "case.safetensors"
    target.write_bytes(len(raw).to_bytes(8, "little") + raw + body[:data.draw(st.integers(0, len(body) + 8))])
    _check_like_safetensors(target)


@FUZZ
@given(raw=st.binary(max_size=600), cut=st.integers(0, 400))
def test_garbage_and_truncated_safetensors(st_original, tmp_path, raw, cut):
    original = st_original.read_bytes()
    target = tmp_path / "case.safetensors"
    for content in (raw, original[:cut], original[:cut] + raw, len(raw).to_bytes(8, "little") + raw):
        target.write_bytes(content)
        _check_like_safetensors(target)


# -- the native HTTP response parser (csrc/http_protocol.cpp): status lines, headers,
# lengths, ranges, redirects and proxy settings as a hostile server or environment may
# give them. Every case ends in a decision that is safe to act on (never more body bytes
# than the range asked for), or an IoError (an OSError) for a redirect or proxy refused.

HEADER_NAMES = ["Content-Length", "content-length", "Content-Range", "Location", "ETag", "Connection",
                "Transfer-Encoding", "X-Other", "content-range ", " Content-Length", "Retry-After"]
HEADER_VALUES = st.one_of(
    st.integers(-5, 2**70).map(str),
    st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", st.integers(-2, 2**66), st.integers(-2, 2**66),
              st.one_of(st.just("*"), st.integers(-2, 2**66).map(str))),
    st.sampled_from(["close", "keep-alive", "chunked", "identity", "/x", "//h/x", "http://a/b", "https://[::1]:8/x",
                     "https://[", "http://h:99999/", "?q", "x y", "W/\"e\"", "\"e\"", "", " ", "bytes */10",
                     "bytes 0-"]),
    st.text(max_size=24),
)


@st.composite
def response_heads(draw):
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.", "http/1.1", "HTTP/1.1x", ""]))
    status = draw(st.one_of(st.sampled_from([200, 206, 301, 302, 304, 307, 404, 412, 416, 429, 500, 503]),
                            st.integers(-1, 1200)))
    reason = draw(st.sampled_from(["", " OK", " Partial Content", " ", "\t?"]))
    lines = [f"{version} {status}{reason}"]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(f"{draw(st.sampled_from(HEADER_NAMES))}:{draw(HEADER_VALUES)}")
    head = "\r\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        head = head[:draw(st.integers(0, len(head)))] + draw(st.binary(max_size=40))
    return head


@FUZZ
@given(head=st.one_of(response_heads(), st.binary(max_size=300)), offset=st.integers(0, 2**62),
       length=st.integers(1, 2**40), etag=st.sampled_from(["", '"e"', 'W/"e"']))
def test_http_response_parser(head, offset, length, etag):
    from flashtensors import _native

    native = _native.module()
    kind, want, close_after, problem, status, location, got_etag, wait_s = native.http_plan_body(head, offset, length,
                                                                                                 etag)
    assert kind in ("body", "retry", "redirect", "fatal")
    assert 0 <= wait_s <= 3600 and (wait_s == 0 or kind == "retry")
    if kind == "body":
        assert 0 < want <= length and status in (200, 206) and not problem
        assert not (etag and got_etag and got_etag != etag.encode())
    elif kind == "redirect":
        assert location and 300 <= status < 400
        try:
            to = native.http_redirect("http://origin.test:8080/dir/file?q=1", location)
        except OSError:
            return
        assert to.startswith(("http://", "https://")) and not any(c in to for c in " \r\n")
    else:
        assert problem and problem.isprintable() and problem.isascii()


@FUZZ
@given(location=st.text(max_size=60), base=st.sampled_from(["http://h/a/b", "https://[::1]:8443/x?y", "http://h:1/"]))
def test_http_redirect_targets(location, base):
    from flashtensors import _native

    try:
        to = _native.module().http_redirect(base, location.encode("utf-8", "surrogatepass"))
    except OSError as e:
        assert str(e).isprintable() and not str(e).rstrip().endswith(":")  # never an empty location shown
        return
    assert to.startswith(("http://", "https://")) and not any(c in to for c in " \t\r\n")


# RFC 3986 section 5.4: its examples of references resolved against http://a/b/c/d;p?q
# (fragments left out: never sent); "g:h" and "http:g" name no http(s) URL, refused.
RFC_3986_EXAMPLES = {
    "g": "/b/c/g", "./g": "/b/c/g", "g/": "/b/c/g/", "/g": "/g", "//g": "//g/", "?y": "/b/c/d;p?y",
    "g?y": "/b/c/g?y", "#s": "/b/c/d;p?q", "g#s": "/b/c/g", "g?y#s": "/b/c/g?y", ";x": "/b/c/;x", "g;x": "/b/c/g;x",
    "g;x?y#s": "/b/c/g;x?y", "": "/b/c/d;p?q", ".": "/b/c/", "./": "/b/c/", "..": "/b/", "../": "/b/",
    "../g": "/b/g", "../..": "/", "../../": "/", "../../g": "/g",
    "../../../g": "/g", "../../../../g": "/g", "/./g": "/g", "/../g": "/g", "g.": "/b/c/g.", ".g": "/b/c/.g",
    "g..": "/b/c/g..", "..g": "/b/c/..g", "./../g": "/b/g", "./g/.": "/b/c/g/", "g/./h": "/b/c/g/h",
    "g/../h": "/b/c/h", "g;x=1/./y": "/b/c/g;x=1/y", "g;x=1/../y": "/b/c/y", "g?y/./x": "/b/c/g?y/./x",
    "g?y/../x": "/b/c/g?y/../x", "g#s/./x": "/b/c/g", "g#s/../x": "/b/c/g",
}


@pytest.mark.parametrize("reference", [*RFC_3986_EXAMPLES, "g:h", "http:g"])
def test_relative_redirects_resolve_as_rfc_3986_says(reference):
    from flashtensors import _native

    native = _native.module()
    if reference not in RFC_3986_EXAMPLES:
        with pytest.raises(OSError, match=f"{reference}: not an http|unsupported location: {reference}"):
            native.http_redirect("http://a/b/c/d;p?q", reference.encode())
        return
    expected = RFC_3986_EXAMPLES[reference]
    expected = "http://g:80/" if expected == "//g/" else "http://a:80" + expected
    assert native.http_redirect("http://a/b/c/d;p?q", reference.encode()) == expected


def test_a_query_only_redirect_keeps_the_path():
    from flashtensors import _native

    to = _native.module().http_redirect("https://cdn.test/repos/ab/cd?old=1", b"?X-Amz-Signature=s&X-Amz-Expires=60")
    assert to == "https://cdn.test:443/repos/ab/cd?X-Amz-Signature=s&X-Amz-Expires=60"


@FUZZ
@given(proxy=st.one_of(st.text(max_size=40), st.sampled_from(["http://u:p%40@[::1]:3128/", "socks5://h:1", "h", "h:0",
                                                              "https://h:8443", "http://h:65536", "@:", "[::1"])),
       no_proxy=st.one_of(st.text(max_size=30), st.sampled_from(["*", ".test", "*.test,h", "[::1]", ",,"])),
       host=st.sampled_from(["a.test", "test", "h", "::1", "127.0.0.1", "xtest"]))
def test_proxy_settings(proxy, no_proxy, host, monkeypatch):
    from flashtensors import _native

    try:
        (proxy + no_proxy).encode()
    except UnicodeEncodeError:
        return  # not representable in the environment
    if "\x00" in proxy + no_proxy:
        return
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("no_proxy", no_proxy)
    url = f"http://{'[' + host + ']' if ':' in host else host}:80/x"
    try:
        proxy_host, port, _ = _native.module().proxy_for(url)
    except OSError:
        return
    if proxy_host:
        assert 0 < int(port) < 65536
# -- Hugging Face weight indexes: the native reader (which keeps only the distinct file
# names) agrees with Python's json on every index Python reads strictly (no duplicate
# keys, no NaN), and refuses the rest with a FlashFormatError. Objects of more than 16
# keys, with keys written plainly or as escapes, exercise the sorted duplicate check.

def _reference_shard_names(raw: bytes):
    """What hf_shard_names must return for ``raw``, by Python's json; None if invalid."""
    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name):
        raise ValueError(name)

    try:
        doc = json.loads(raw, object_pairs_hook=unique, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        return None
    names = doc["weight_map"].values()
    if not all(isinstance(n, str) and os.path.basename(n) == n and n not in ("", ".", "..") and "\0" not in n
               and len(n) <= 255 for n in names):
        return None
    return list(dict.fromkeys(names))


def _json_key(key: str, escaped: bool) -> str:
    if not escaped:
        return json.dumps(key, ensure_ascii=False)
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1] for c in key) + '"'


@st.composite
def hf_indexes(draw):
    keys = draw(st.lists(st.text(alphabet="ab\u00e9\U0001F600", max_size=3), max_size=40))
    n = len(keys)
    values = draw(st.lists(st.sampled_from(["m-1.safetensors", "m-2.safetensors", "../m.safetensors", "", "a/b",
                                            "m\u00e9.safetensors", 3, None, [1]]), min_size=n, max_size=n))
    escaped = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    members = ",".join(f"{_json_key(k, e)}:{json.dumps(v)}" for k, v, e in zip(keys, values, escaped))
    weight_map = draw(st.sampled_from(["{%s}", "[%s]", '"%s"'])) % members if draw(st.booleans()) else "{%s}" % members
    return f'{{"metadata":{json.dumps(draw(json_values))},"weight_map":{weight_map}}}'.encode()


@FUZZ
@given(raw=hf_indexes())
def test_hf_weight_index_reads_as_python_json_does(raw):
    from flashtensors.errors import FlashFormatError
    from flashtensors.formats.safetensors import hf_shard_names

    want = _reference_shard_names(raw)
    if want is None:
        with pytest.raises(FlashFormatError, match="^idx: not a valid weight index"):
            hf_shard_names(raw, "idx")
    else:
        assert hf_shard_names(raw, "idx") == want


@FUZZ
@given(raw=st.binary(max_size=600), cut=st.integers(0, 200))
def test_garbage_and_truncated_hf_weight_index(raw, cut):
    from flashtensors.errors import FlashFormatError
    from flashtensors.formats.safetensors import hf_shard_names

    valid = b'{"metadata": {"total_size": 8}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}'
    for content in (raw, valid[:cut], valid[:cut] + raw):
        try:
            got = hf_shard_names(content, "idx")
        except FlashFormatError:
            continue
        assert got == _reference_shard_names(content)
