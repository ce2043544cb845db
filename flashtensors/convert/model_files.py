"""A model directory's files: which hold weights (of any framework, flash included) or a
weight index, and the others (config, tokenizer, ...), which `convert` and `fetch` copy.
For a remote directory: which other files there are and fetching them into a local
directory. On S3 they are listed; a web server cannot be listed, so there the usual
Hugging Face names are asked for one by one.

Example:
    >>> store = open_store("s3://bucket/models/qwen3", 30)            # doctest: +SKIP
    >>> fetch_files(store, other_files(store), "/tmp/qwen3")
    ['config.json', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

import os
from pathlib import PurePath, PurePosixPath

from ..errors import FlashError
from ..formats.flash import INDEX_FILENAME

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
OTHER_WEIGHT_SUFFIXES = (".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".flash")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + OTHER_WEIGHT_SUFFIXES
INDEX_SUFFIX = ".index.json"


def is_weight_file(path: PurePath) -> bool:
    """Whether ``path`` holds weights (of any framework, flash included) or a weight index.

    Example:
        >>> is_weight_file(PurePath("model.safetensors.index.json")), is_weight_file(PurePath("config.json"))
        (True, False)
    """
    name = path.name
    if name == INDEX_FILENAME:
        return True
    if name.endswith(INDEX_SUFFIX):  # model.safetensors.index.json, pytorch_model.bin.index.json, ...
        name = name[: -len(INDEX_SUFFIX)]
    return name.endswith(WEIGHT_SUFFIXES)


# What a model directory on a web server is asked for (it cannot be listed).
WELL_KNOWN = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json", "params.json",
)
# Larger than any config or tokenizer file; a bigger object is not fetched.
MAX_FILE_BYTES = 256 << 20


def other_files(store) -> list:
    """Names of the non-weight, non-hidden files directly in the store's directory.

    Example:
        >>> other_files(open_store("http://h/m", 30))                 # doctest: +SKIP
        ['config.json', 'tokenizer.json']
    """
    if store.listable:
        names = store.list()
    else:
        names = [n for n in WELL_KNOWN if store.stat(n) is not None]
    return sorted(n for n in names if n and not n.startswith(".") and not is_weight_file(PurePosixPath(n)))


def fetch_files(store, names: list, directory, overwrite: bool = True) -> list:
    """Fetches objects ``names`` of ``store`` into ``directory`` (created if missing), each
    written to a temporary name and renamed when complete. Returns the names written
    (existing files are kept unless ``overwrite``).

    Raises FlashRemoteError naming the object that could not be read, FlashError for an
    object larger than MAX_FILE_BYTES.
    """
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in names:
        path = os.path.join(directory, name)
        if not overwrite and os.path.exists(path):
            continue
        info = store.stat(name)
        if info is not None and info.size is not None and info.size > MAX_FILE_BYTES:
            raise FlashError(f"{store.describe(name)}: {info.size} bytes, too large for a model's "
                             f"config or tokenizer file (at most {MAX_FILE_BYTES})")
        body, _ = store.read(name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        written.append(name)
    return written


def default_model_dir(store) -> str:
    """Where :func:`fetch_model_files` puts a remote model's files by default:
    ``$XDG_CACHE_HOME/flashtensors/models/<last path part>-<hash of the location>``
    (``~/.cache`` without ``XDG_CACHE_HOME``); the hash covers an S3 store's endpoint too."""
    import hashlib
    import re

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = store.describe("x")[:-2]  # the directory's URL, without a query string
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", where.rsplit("/", 1)[-1])[:60].lstrip(".") or "root"
    digest = hashlib.sha256(store.identity().encode()).hexdigest()[:16]
    return os.path.join(base, "flashtensors", "models", f"{tail}-{digest}")


def fetch_model_files(url: str, directory=None, timeout=None) -> str:
    """Fetches the config, tokenizer and other small files of the remote model directory
    ``url`` (``s3://bucket/prefix``, ``http(s)://...``), never its weights, into
    ``directory`` (default: :func:`default_model_dir`; for a Hub location, ``org/name`` or
    ``hf://org/name[@revision]``, its snapshot in the Hub's cache); returns the directory. Files
    fetched before are fetched again (a changed config is picked up).

    This makes the local model directory an engine reads its config and tokenizer from
    while the weights are streamed from ``url``: for vLLM, ``--model DIR --load-format flash
    --model-loader-extra-config '{"weights": URL}'``. On the command line: ``flashtensors
    fetch URL [DIR]``.

    Raises:
        FlashRemoteError: the URL cannot be read (names the URL or object).
        FlashError: the URL holds no ``config.json`` (not a Hugging Face model directory).

    Example:
        >>> fetch_model_files("s3://bucket/models/qwen3")                 # doctest: +SKIP
        '/root/.cache/flashtensors/models/qwen3-1f3a9c0d2b4e6f70'
    """
    from ..stores import open_store

    store = open_store(url, timeout)
    if store.single is not None:
        raise FlashError(f"{url}: names one weight file; give the URL of the model's directory")
    names = other_files(store)
    if "config.json" not in names:
        raise FlashError(f"{store.describe('config.json')}: not found, so {url} is not a Hugging Face model "
                         f"directory (the engine needs its config.json)")
    keep = getattr(getattr(store, "tier", None), "keep", None)
    if directory is None and keep is not None:  # a Hub model: into the Hub's cache, where every engine looks
        for name in names:
            keep(name, *store.read(name))
        return store.tier.dir
    directory = os.path.abspath(os.fspath(directory if directory is not None else default_model_dir(store)))
    fetch_files(store, names, directory)
    return directory
