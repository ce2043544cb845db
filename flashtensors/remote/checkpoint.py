"""What a remote URL holds, whatever the format: the remote counterpart of
flashtensors/checkpoint.py. Fetches the small parts only (flash index, safetensors
headers, HF weight index) and turns them into the same native tensor table a local
checkpoint becomes; the data "paths" it hands back are URLs for the native reader."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FlashFormatError, FlashRemoteError
from ..format import INDEX_FILENAME, MAX_INDEX_BYTES, Index, parse_index_bytes
from ..safetensors_format import (
    HF_INDEX_FILENAME,
    MAX_HEADER_BYTES,
    SINGLE_FILENAME,
    SUFFIX,
    _read_header,
    hf_shard_names,
    index_of_headers,
)
from .store import ObjectInfo, open_store
from .tier import LocalTier

# The first GET of a safetensors file: its header length and, nearly always, its header.
HEADER_PROBE_BYTES = 256 << 10


@dataclass
class RemoteCheckpoint:
    """A remote checkpoint, opened: the index, the URL the native reader gets for each data
    file, and each data file's name and identity (size, ETag). With a local tier, ``local``
    holds per data file the path of its up-to-date local copy, or None."""

    url: str
    index: Index
    data_urls: list
    names: list
    objects: list  # ObjectInfo per data file
    store: object
    index_bytes: dict  # small files fetched, by name (the flash index or the HF weight index)
    tier: LocalTier | None = None
    local: list | None = None

    def sources(self) -> list:
        """What the native reader reads, per data file: its local copy, else its URL."""
        return [p or u for p, u in zip(self.local or [None] * len(self.data_urls), self.data_urls)]


def open_remote(url: str, timeout: float, cache_dir: str | None = None) -> RemoteCheckpoint:
    """Opens the checkpoint at ``url``: a flash checkpoint directory (preferred), a
    ``.safetensors`` file, or a directory of safetensors weights (``model.safetensors.
    index.json``, else ``model.safetensors``, else, on S3, every ``*.safetensors``).

    With ``cache_dir`` (the local tier), each data file whose local copy there has the
    remote object's size and ETag is read from that copy (``.local``); safetensors headers
    of such files are read from it too.

    Raises FlashRemoteError (missing, forbidden, unreachable) or FlashFormatError.

    Example:
        >>> ckpt = open_remote("http://127.0.0.1:8080/m", 30)   # doctest: +SKIP
        >>> ckpt.index.kind, ckpt.data_urls[0]
        ('flash', 'http://127.0.0.1:8080/m/model-00000.flash')
    """
    store, single = open_store(url, timeout)
    tier = LocalTier(cache_dir, store) if cache_dir else None
    if single is not None:
        return _safetensors(url, store, [single], {}, tier)
    got = store.read(INDEX_FILENAME, missing_ok=True)
    if got is not None:
        return _flash(url, store, got[0], tier)
    got = store.read(HF_INDEX_FILENAME, missing_ok=True)
    if got is not None:
        names = hf_shard_names(got[0], store.describe(HF_INDEX_FILENAME))
        return _safetensors(url, store, names, {HF_INDEX_FILENAME: got[0]}, tier)
    if store.stat(SINGLE_FILENAME) is not None:
        return _safetensors(url, store, [SINGLE_FILENAME], {}, tier)
    if store.listable:
        names = sorted(n for n in store.list() if n.endswith(SUFFIX))
        if names:
            return _safetensors(url, store, names, {}, tier)
    raise FlashRemoteError(f"{url}: no checkpoint here (none of {INDEX_FILENAME}, {HF_INDEX_FILENAME}, "
                           f"{SINGLE_FILENAME} found)", 404, url)


def _flash(url, store, raw: bytes, tier) -> RemoteCheckpoint:
    if len(raw) > MAX_INDEX_BYTES:
        raise FlashFormatError(f"{store.describe(INDEX_FILENAME)}: index larger than {MAX_INDEX_BYTES} bytes")
    index = parse_index_bytes(raw, store.describe(INDEX_FILENAME))
    objects = []
    for i, f in enumerate(index.files):
        info = store.stat(f.name)
        if info is None:
            raise FlashRemoteError(f"{store.describe(f.name)}: data file missing (HTTP 404){_needed_by(index, i)}",
                                   404, store.describe(f.name))
        if info.size is not None and info.size != f.size:
            raise FlashFormatError(f"{store.describe(f.name)}: data file is {info.size} bytes, the index says "
                                   f"{f.size} (truncated or replaced){_needed_by(index, i)}")
        objects.append(ObjectInfo(f.size, info.etag))
    names = [f.name for f in index.files]
    local = [tier.find(n, o) for n, o in zip(names, objects)] if tier else None
    return RemoteCheckpoint(url, index, [store.data_url(n) for n in names], names, objects, store,
                            {INDEX_FILENAME: raw}, tier, local)


def _safetensors(url, store, names: list, small: dict, tier) -> RemoteCheckpoint:
    headers, objects, local = [], [], []
    for name in names:
        header, info, path = _cached_header(store, name, tier) if tier else (*_header(store, name), None)
        headers.append((name, header, info.size, store.describe(name)))
        objects.append(info)
        local.append(path)
    index = index_of_headers(headers, url)
    return RemoteCheckpoint(url, index, [store.data_url(n) for n in names], list(names), objects, store, small,
                            tier, local if tier else None)


def _cached_header(store, name: str, tier: LocalTier):
    """``(header, identity, local copy or None)`` of a remote safetensors file: the header
    read from the local copy when that is up to date (a size-and-ETag request instead of a
    header GET), else from the remote file."""
    info = store.stat(name)
    path = tier.find(name, info) if info is not None else None
    if path is not None:
        try:
            header, _ = _read_header(path)
            return header, info, path
        except FlashFormatError:
            pass  # a damaged local copy: read the remote file (and replace the copy)
    return (*_header(store, name), None)


def _header(store, name: str):
    """The JSON header of a remote safetensors file and the file's identity."""
    where = store.describe(name)
    got = store.read(name, 0, HEADER_PROBE_BYTES - 1, missing_ok=True)
    if got is None:
        raise FlashRemoteError(f"{where}: weight file missing (HTTP 404)", 404, where)
    probe, info = got
    if info.size is None:
        raise FlashRemoteError(f"{where}: the server did not tell the file's size", 0, where)
    if len(probe) < 8:
        raise FlashFormatError(f"{where}: not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(probe[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise FlashFormatError(f"{where}: header of {n} bytes is larger than safetensors allows ({MAX_HEADER_BYTES})")
    if 8 + n > info.size:
        raise FlashFormatError(f"{where}: header of {n} bytes does not fit in the file ({info.size} bytes; "
                               "truncated?)")
    header = probe[8:8 + n]
    if len(header) < n:
        rest, _ = store.read(name, 8 + len(header), 8 + n - 1)
        header += rest
    if len(header) != n:
        raise FlashFormatError(f"{where}: the file ended inside its header (truncated?)")
    return header, info


def _needed_by(index: Index, file: int) -> str:
    for t in index.tensors.values():
        if t.file == file:
            return f" (needed by tensor {t.name!r})"
    return ""


def tensor_at(index: Index, file: int, offset: int) -> str | None:
    """The name of the tensor whose bytes include ``offset`` of data file ``file``."""
    for t in index.tensors.values():
        if t.file == file and t.offset <= offset < t.offset + max(t.length, 1):
            return t.name
    return None
