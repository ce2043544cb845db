"""The exceptions flashtensors raises. Every message names the file and, where there is
one, the tensor concerned."""

from __future__ import annotations


class FlashError(Exception):
    """Base class of every error flashtensors raises on purpose."""


class FlashFormatError(FlashError):
    """A checkpoint is invalid, corrupt, truncated or missing files."""


class FlashChecksumError(FlashFormatError):
    """Tensor bytes do not match the checksums recorded when they were saved.

    ``mismatches`` lists ``(tensor_name, data_file)`` for every tensor that failed.
    """

    def __init__(self, message: str, mismatches: list):
        super().__init__(message)
        self.mismatches = mismatches


class FlashDeviceError(FlashError):
    """A device map is invalid, names a device this machine lacks, or a target is too small."""


class FlashRemoteError(FlashError):
    """A remote checkpoint (http(s):// or s3:// URL) could not be read: the object is
    missing (404) or forbidden (403), the server kept failing or stopped answering.

    ``url`` is the object concerned (without a presigned URL's query string), ``status``
    the HTTP status (0 where there was none: refused, reset, timed out).
    """

    def __init__(self, message: str, status: int = 0, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url
