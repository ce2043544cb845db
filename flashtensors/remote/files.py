"""A remote model directory's other files (config, tokenizer, ...): which there are and
fetching them into a local directory. On S3 they are listed; a web server cannot be
listed, so there the usual Hugging Face names are asked for one by one.

Example:
    >>> store, _ = open_store("s3://bucket/models/qwen3", 30)         # doctest: +SKIP
    >>> fetch_files(store, other_files(store), "/tmp/qwen3")
    ['config.json', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from ..errors import FlashError

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
        >>> other_files(open_store("http://h/m", 30)[0])              # doctest: +SKIP
        ['config.json', 'tokenizer.json']
    """
    from ..sources import is_weight_file

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
