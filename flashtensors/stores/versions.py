"""The object versions a load is pinned to: the ETag each object had when the load
first saw it (opening the checkpoint). Later reads of the object, by Python (the small
requests) and by the native reader (its URL carries the ETag in its fragment, which is
never sent; csrc/http_protocol.h pinned_etag), ask for that version with ``If-Match``
and check the ETag of the answer: an object replaced mid-load fails the load with a
FlashRemoteError naming it instead of mixing old and new bytes, and the local tier never
commits such a mix.

Example:
    >>> v = Versions()
    >>> v.seen("a.flash", '"abc"', "http://h/m/a.flash")
    >>> v.pinned_url("a.flash", "http://h/m/a.flash")
    'http://h/m/a.flash#flash-if-match=%22abc%22'
"""

from __future__ import annotations

import urllib.parse

from ..errors import FlashRemoteError

FRAGMENT = "#flash-if-match="


class Versions:
    """ETag per object name, as first seen."""

    def __init__(self):
        self._etags: dict = {}

    def etag(self, name: str) -> str | None:
        return self._etags.get(name)

    def seen(self, name: str, etag: str | None, where: str) -> None:
        """Records ``etag`` for ``name`` the first time; FlashRemoteError (naming
        ``where``) if a later answer carries a different one."""
        if not etag:
            return
        first = self._etags.setdefault(name, etag)
        if first != etag:
            raise FlashRemoteError(f"{where}: the object changed during the load (ETag {etag}, was {first})",
                                   412, where)

    def pinned_url(self, name: str, url: str) -> str:
        """``url`` with the native reader's pin to the version seen of ``name``, if any."""
        etag = self._etags.get(name)
        return url + FRAGMENT + urllib.parse.quote(etag, safe="") if etag else url
