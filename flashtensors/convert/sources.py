"""Read model weights in the formats ``flashtensors convert`` accepts, one file at a time.

A *source* is what a user names as SRC:

- one safetensors file (``model.safetensors``);
- one PyTorch state dict (``*.bin``, ``*.pt``, ``*.pth``), loaded with ``weights_only=True``
  so a hostile pickle is refused instead of run;
- an ``http(s)://`` or ``s3://`` URL of a checkpoint (flash, safetensors, or a Hugging Face
  directory: see :mod:`flashtensors.remote.convert_source`);
- a directory of weight files, such as a Hugging Face model directory. Its weights are the
  safetensors files a load of the directory reads (the same choice as ``load_dict``, from
  the format registry in flashtensors/formats/__init__.py: the shards of
  ``model.safetensors.index.json``, else ``model.safetensors``, else every ``*.safetensors``),
  else the files named by ``pytorch_model.bin.index.json``, else ``pytorch_model*.bin``, else
  every ``*.bin``/``*.pt``/``*.pth``. Its other top-level files (config, tokenizer, ...; not
  hidden files) are *extras*.

Tensors come back lazily: safetensors files and zip-format PyTorch files are memory-mapped,
so holding one file's tensors costs page cache, not process memory.

Example:
    >>> src = open_source("my-model/")                        # doctest: +SKIP
    >>> for shard in src.shards:                              # doctest: +SKIP
    ...     tensors = dict(read_shard(shard))
"""

from __future__ import annotations

import pickle
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from flashtensors import INDEX_FILENAME, FlashError, FlashFormatError
from flashtensors.convert.model_files import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, is_weight_file
from flashtensors.formats import find_format, safetensors_formats
from flashtensors.formats.safetensors import HF_INDEX_FILENAME, hf_shard_names
from flashtensors.stores import is_remote
from flashtensors.stores.local import LocalStore


class SourceError(FlashError):
    """SRC is missing, unreadable, or not a format flashtensors can convert."""


class UnsafePickleError(SourceError):
    """A PyTorch file holds objects other than tensors, so it was not unpickled."""


@dataclass(frozen=True)
class Source:
    """The weight files of a source, in order, and the other files that travel with them.

    Attributes:
        path: the file or directory the user named.
        shards: the weight files to read, in order.
        extras: top-level non-weight, non-hidden files of a directory source (config, tokenizer, ...).
        skipped_dirs: non-hidden subdirectories of a directory source, which are not copied.
    """

    path: Path
    shards: tuple[Path, ...]
    extras: tuple[Path, ...] = ()
    skipped_dirs: tuple[Path, ...] = ()

    @property
    def nbytes(self) -> int:
        """Total size of the weight files on disk, in bytes."""
        return sum(shard.stat().st_size for shard in self.shards)

    def shard_bytes(self, shard: Path) -> int:
        """Size of one weight file, in bytes."""
        return shard.stat().st_size

    def batches(self, shard: Path, limit: int) -> Iterator[dict]:
        """The tensors of one weight file (see :func:`read_shard`) as dicts of about
        ``limit`` bytes. Safetensors files hold no shared tensors, so they can be split;
        PyTorch files come whole, to keep their ties."""
        limit = limit if shard.name.endswith(SAFETENSORS_SUFFIXES) else None
        batch, size = {}, 0
        for name, tensor in read_shard(shard):
            if batch and limit is not None and size + tensor.nbytes > limit:
                yield batch
                batch, size = {}, 0
            batch[name] = tensor
            size += tensor.nbytes
        if batch:
            yield batch

    def copy_extra(self, extra: Path, directory: Path) -> None:
        """Copies one of the extras into ``directory``."""
        shutil.copy2(extra, Path(directory) / extra.name)


def open_source(path: str | Path):
    """Find the weight files (and, for a directory, the extras) of ``path``: a
    :class:`Source`, or for a URL a :class:`flashtensors.convert.remote_source.RemoteSource`
    (same attributes and methods).

    Raises:
        SourceError: ``path`` does not exist, holds no weights, or has an unsupported type.

    Example:
        >>> open_source("model.safetensors").shards         # doctest: +SKIP
        (PosixPath('model.safetensors'),)
    """
    if is_remote(path):
        from flashtensors.convert.remote_source import open_remote_source

        return open_remote_source(path)
    path = Path(path)
    if path.is_dir():
        return _open_dir(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file or directory")
    if not path.name.endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES):
        raise SourceError(f"{path}: unsupported input; expected {_accepted()}")
    return Source(path=path, shards=(path,))


def read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of one weight file, in file order.

    Raises:
        SourceError: the file is corrupt or does not hold a flat ``{name: tensor}`` dict.
        UnsafePickleError: a PyTorch file holds objects other than tensors.

    Example:
        >>> dict(read_shard(Path("model.safetensors")))     # doctest: +SKIP
        {'lm_head.weight': tensor(...)}
    """
    if path.name.endswith(SAFETENSORS_SUFFIXES):
        yield from _read_safetensors(path)
    else:
        yield from _read_torch(path).items()


def _accepted() -> str:
    return "a .safetensors file, a .bin/.pt/.pth PyTorch state dict, or a directory of them"


def _open_dir(path: Path) -> Source:
    entries = sorted(path.iterdir())
    files = [p for p in entries if p.is_file()]
    shards = (
        _safetensors_shards(path)
        or _shards_from_index(path / "pytorch_model.bin.index.json")
        or [p for p in files if p.name.startswith("pytorch_model") and p.name.endswith(".bin")]
        or [p for p in files if p.name.endswith(TORCH_SUFFIXES)]
    )
    if not shards:
        if (path / INDEX_FILENAME).is_file():
            raise SourceError(f"{path}: already a flash checkpoint, and holds no other weights to convert")
        raise SourceError(f"{path}: no weight files found; expected {_accepted()}")
    return Source(
        path=path,
        shards=tuple(shards),
        extras=tuple(p for p in files if not is_weight_file(p) and not p.name.startswith(".")),
        skipped_dirs=tuple(p for p in entries if p.is_dir() and not p.name.startswith(".")),
    )


def _safetensors_shards(path: Path) -> list[Path]:
    """The safetensors files a load of directory ``path`` reads (the format registry's
    choice), or []."""
    try:
        found = find_format(LocalStore(str(path)), safetensors_formats())
    except FlashFormatError as e:
        raise SourceError(str(e)) from None
    if found is None:
        return []
    return _existing(path / HF_INDEX_FILENAME, found.names) if found.name == "hf-index" else \
        [path / n for n in found.names]


def _shards_from_index(index_path: Path) -> list[Path]:
    """The files named by a Hugging Face weight index, in first-use order; [] if there is no index."""
    if not index_path.is_file():
        return []
    try:
        return _existing(index_path, hf_shard_names(index_path.read_bytes(), str(index_path)))
    except FlashFormatError as e:
        raise SourceError(str(e)) from None


def _existing(index_path: Path, names: list) -> list[Path]:
    """``names`` (named by the weight index ``index_path``) as paths beside it; SourceError
    naming those that are missing."""
    missing = [n for n in names if not (index_path.parent / n).is_file()]
    if missing:
        raise SourceError(f"{index_path}: names missing weight file(s): {', '.join(missing)}")
    return [index_path.parent / n for n in names]


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt") as f:
            # File order where this safetensors release has offset_keys (2025 and later), else name order.
            names = f.offset_keys() if hasattr(f, "offset_keys") else f.keys()
            tensors = [(name, f.get_tensor(name)) for name in names]
    except SafetensorError as e:
        raise SourceError(f"{path}: not a valid safetensors file ({e})") from None
    yield from tensors


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    # torch.save writes a zip archive (since torch 1.6; these can be memory-mapped) or, in the
    # legacy format, a pickle that starts with the PROTO opcode. Anything else is not a checkpoint.
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                raise SourceError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the errors say enough
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{path}: refused to unpickle: the file holds more than tensors ({_unpickler_reason(e)}); "
            "only plain state dicts are loaded, so nothing in the file was run"
        ) from None
    except OSError:
        raise
    except Exception as e:  # for other input torch.load raises KeyError, EOFError, RuntimeError, ...
        raise SourceError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state_dict, dict):
        raise SourceError(f"{path}: holds a {type(state_dict).__name__}, not a state dict (name -> tensor)")
    for name, value in state_dict.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise SourceError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only flat state dicts (name -> tensor) can be converted"
            )
    return state_dict


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """The specific reason in torch's weights-only refusal, without its advice paragraphs."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(e).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    reason = " ".join(reasons).removeprefix("WeightsUnpickler error:").strip().rstrip(".")
    return reason or "rejected by torch's weights-only unpickler"
