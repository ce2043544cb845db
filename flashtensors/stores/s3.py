"""S3 and S3-compatible stores (MinIO, R2, GCS interoperability) through botocore.

Credentials, region and endpoint come from the standard AWS configuration, as the AWS
CLI reads it: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE`` and the
config files, instance and container roles. Requests are signed by botocore, never here:
small objects are fetched with botocore itself, tensor bytes through presigned GET URLs
that the native HTTP reader fetches with range requests.

botocore's own retries are off: every call is tried again by :class:`S3Store` within the
load's :class:`~.deadline.Deadline`, each attempt with connect and read timeouts no
longer than what is left of it (clients are kept per timeout step), so a silent
endpoint fails the load about ``timeout`` seconds after its last answer.

botocore is an optional dependency: ``pip install "flashtensors[s3]"``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import FlashError, FlashRemoteError
from .api import ObjectInfo
from .deadline import Deadline, retryable_status
from .http_client import MAX_OBJECT_BYTES
from .versions import Versions

PRESIGN_SECONDS = 6 * 3600  # a load finishes well within this; credentials may cap it lower


@lru_cache(maxsize=None)
def _client(timeout: float, _environment: tuple):
    try:
        import botocore.config
        import botocore.session
    except ImportError:
        raise FlashError('s3:// URLs need botocore: pip install "flashtensors[s3]"') from None
    session = botocore.session.get_session()
    region = session.get_config_variable("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = botocore.config.Config(signature_version="s3v4", connect_timeout=timeout, read_timeout=timeout,
                                    retries={"mode": "standard", "total_max_attempts": 1})
    return session.create_client("s3", region_name=region, config=config)


ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def client(timeout: float = 30.0):
    """The botocore S3 client flashtensors uses, with connect and read timeouts of
    ``timeout`` seconds and no retries of its own: made on first use, again when the AWS
    environment variables that choose the endpoint, profile or keys change.

    Example:
        >>> client().list_buckets()["Buckets"]                # doctest: +SKIP
    """
    return _client(float(timeout), tuple(os.environ.get(name) for name in ENVIRONMENT))


def socket_timeout(left: float, timeout: float) -> float:
    """The socket timeout of an attempt with ``left`` seconds of a ``timeout`` deadline:
    the smallest step (a power of two, or ``timeout`` itself) not shorter than ``left``,
    so that few clients serve every attempt and none waits much past the deadline.

    Example:
        >>> socket_timeout(30, 30), socket_timeout(12, 30), socket_timeout(0.2, 30)
        (30.0, 16.0, 0.25)
    """
    steps = [2.0 ** k for k in range(-3, 17) if 2.0 ** k < timeout] + [float(timeout)]
    return next(s for s in steps if s >= left)


class ShortBody(Exception):
    """An answer with fewer bytes than its Content-Range says it holds."""


def _retryable(e: Exception) -> bool:
    import botocore.exceptions as be

    status = _status(e)
    return (isinstance(e, (be.ConnectionError, be.HTTPClientError, be.IncompleteReadError, ShortBody))
            or retryable_status(status))


class S3Store:
    """Objects below ``s3://bucket/prefix``."""

    listable = True
    local = False

    def __init__(self, bucket: str, prefix: str, timeout: float, single: str | None = None):
        if not bucket:
            raise FlashRemoteError("s3:// URL without a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.timeout = timeout
        self.single = single
        self.s3 = client(timeout)
        self.deadline = Deadline(timeout)  # one per opened checkpoint: every call of it
        self.versions = Versions()  # reads pinned to the ETags first seen

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def identity(self) -> str:
        """Where the objects live (the endpoint too: one bucket name may be on many
        services), as the local tier names its copy of them."""
        return f"s3://{self.bucket}/{self.prefix} at {self.s3.meta.endpoint_url}"

    def data_url(self, name: str) -> str:
        url = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(name)},
                                             ExpiresIn=PRESIGN_SECONDS)
        return self.versions.pinned_url(name, url)

    def is_here(self, name: str) -> bool:
        return False

    def stat(self, name: str) -> ObjectInfo | None:
        r = self.call(name, "head_object", True, **self._version(name))
        if r is None:
            return None
        self.versions.seen(name, r.get("ETag"), self.describe(name))
        return ObjectInfo(r["ContentLength"], r.get("ETag"))

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False,
             limit: int = MAX_OBJECT_BYTES):
        """``(bytes, ObjectInfo)`` of bytes ``start``..``end`` (inclusive; all when None, at
        most ``limit``)."""
        args = self._version(name)
        if start is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
            limit = limit if end is None else min(limit, end - start + 1)

        def get(s3, **kwargs):
            r = s3.get_object(**kwargs)
            if start is None and r["ContentLength"] > limit:
                raise FlashRemoteError(f"{self.describe(name)}: larger than {limit} bytes, too large to be read "
                                       "whole", 0, self.describe(name))
            with r["Body"] as body:
                r["Body"] = body.read(limit)  # never more than asked for, whatever is sent
            total = r.get("ContentRange", "").rsplit("/", 1)[-1]
            if start is not None and total.isdigit():
                expected = min(limit, int(total) - start)
                if len(r["Body"]) < expected:
                    raise ShortBody(f"a short body ({len(r['Body'])} of {expected} bytes)")
            return r

        r = self.call(name, get, missing_ok, **args)
        if r is None:
            return None
        self.versions.seen(name, r.get("ETag"), self.describe(name))
        size = r["ContentLength"]
        if "ContentRange" in r:
            size = int(r["ContentRange"].rsplit("/", 1)[1])
        return r["Body"], ObjectInfo(size, r.get("ETag"))

    def list(self) -> list:
        """Names of the objects directly below the prefix."""
        prefix = self.key("")

        def names(s3, **kwargs):
            pages = s3.get_paginator("list_objects_v2").paginate(**kwargs)
            return [o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])]

        return self.call("", names, False, Bucket=self.bucket, Prefix=prefix, Delimiter="/")

    def _version(self, name: str) -> dict:
        etag = self.versions.etag(name)
        return {"Bucket": self.bucket, "Key": self.key(name), **({"IfMatch": etag} if etag else {})}

    def call(self, name: str, call, missing_ok: bool = False, **kwargs):
        """``call(client, **kwargs)`` (or the client method named ``call``), tried again on
        connection problems, 5xx, 408 and 429 within the deadline, each attempt's socket
        timeouts bounded by what is left of it. None for a 404 when ``missing_ok``."""
        failures = 0
        while True:
            s3 = client(socket_timeout(max(self.deadline.left(), 0.01), self.timeout))
            try:
                r = getattr(s3, call)(**kwargs) if isinstance(call, str) else call(s3, **kwargs)
                self.deadline.progress()
                return r
            except FlashRemoteError:
                raise
            except Exception as e:  # botocore's errors: ClientError, EndpointConnectionError, ...
                if missing_ok and _status(e) == 404:
                    return None
                failures += 1
                if not _retryable(e) or not self.deadline.pause(failures):
                    raise self.error(name, e, self.deadline.expired() and _retryable(e)) from None

    def missing(self, name: str, message: str) -> FlashRemoteError:
        """The error for an object a checkpoint needs and the bucket lacks."""
        where = self.describe(name).rstrip("/")
        return FlashRemoteError(f"{where}: {message} (HTTP 404)", 404, where)

    def error(self, name: str, e: Exception, timed_out: bool = False) -> FlashRemoteError:
        status = _status(e)
        what = f"HTTP {status} " if status else ""
        if status == 412:
            what = "the object changed during the load: " + what
        if timed_out:
            what = f"no answer within {self.timeout:g} s, retries included; last: " + what
        return FlashRemoteError(f"{self.describe(name)}: {what}{e}", status, self.describe(name))


def _status(e: Exception) -> int:
    response = getattr(e, "response", None) or {}
    try:
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


def open_s3(url: str, timeout: float) -> S3Store:
    """The store of an ``s3://bucket/prefix`` location, or of one ``.safetensors`` object
    (then ``single`` names it)."""
    bucket, _, key = url[5:].partition("/")
    if key.endswith(".safetensors"):
        prefix, _, name = key.rpartition("/")
        return S3Store(bucket, prefix, timeout, single=name)
    return S3Store(bucket, key.rstrip("/"), timeout)
