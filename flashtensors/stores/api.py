"""What every store answers (local directories, web servers, S3, the local tier): the
interface the format registry and the loader rely on, and the identity of one object.
A store names objects relative to the checkpoint's location; the tensor bytes are never
read through it (the native reader reads ``data_url(name)``), only small things: an
index, a header, a size, a listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """An object's identity: its size and, for remote objects, its ETag (None locally)."""

    size: int
    etag: str | None


class Store(Protocol):
    """The methods a store has (see flashtensors/stores/__init__.py to add a scheme).

    Attributes:
        local: whether ``data_url`` names files of this machine (page cache, mapping and
            the cache daemon apply to them).
        listable: whether ``list()`` works (a web server cannot be listed).
        single: the name of the one object the location named (a ``.safetensors`` file),
            else None.
    """

    local: bool
    listable: bool
    single: str | None

    def describe(self, name: str) -> str: ...          # the object, as messages name it
    def identity(self) -> str: ...                      # the location, as the local tier names it
    def data_url(self, name: str) -> str: ...           # what the native reader reads
    def is_here(self, name: str) -> bool: ...           # whether data_url(name) is a file of this machine
    def stat(self, name: str) -> ObjectInfo | None: ...
    def read(self, name: str, start: int | None = None, end: int | None = None,
             missing_ok: bool = False, limit: int = ...): ...  # (bytes, ObjectInfo) or None
    def list(self) -> list: ...
    def missing(self, name: str, message: str) -> Exception: ...   # the error for a needed object absent
