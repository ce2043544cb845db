"""S3 and S3-compatible stores (MinIO, R2, GCS interoperability) through botocore.

Credentials, region and endpoint come from the standard AWS configuration, as the AWS
CLI reads it: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE`` and the
config files, instance and container roles. Requests are signed by botocore, never here:
small objects are fetched with botocore itself, tensor bytes through presigned GET URLs
that the native HTTP reader fetches with range requests.

botocore is an optional dependency: ``pip install "flashtensors[s3]"``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import FlashError, FlashRemoteError
from ..store_api import ObjectInfo

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
                                    retries={"mode": "standard", "max_attempts": 4})
    return session.create_client("s3", region_name=region, config=config)


ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def client(timeout: float = 30.0):
    """The botocore S3 client flashtensors uses: made on first use, again when the AWS
    environment variables that choose the endpoint, profile or keys change.

    Example:
        >>> client().list_buckets()["Buckets"]                # doctest: +SKIP
    """
    return _client(float(timeout), tuple(os.environ.get(name) for name in ENVIRONMENT))


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

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def identity(self) -> str:
        """Where the objects live (the endpoint too: one bucket name may be on many
        services), as the local tier names its copy of them."""
        return f"s3://{self.bucket}/{self.prefix} at {self.s3.meta.endpoint_url}"

    def data_url(self, name: str) -> str:
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(name)},
                                              ExpiresIn=PRESIGN_SECONDS)

    def is_here(self, name: str) -> bool:
        return False

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            r = self.s3.head_object(Bucket=self.bucket, Key=self.key(name))
        except Exception as e:  # botocore's errors: ClientError, EndpointConnectionError, ...
            if _status(e) == 404:
                return None
            raise self.error(name, e) from None
        return ObjectInfo(r["ContentLength"], r.get("ETag"))

    def read(self, name: str, start: int | None = None, end: int | None = None, missing_ok: bool = False):
        """``(bytes, ObjectInfo)`` of bytes ``start``..``end`` (inclusive; all when None)."""
        args = {"Bucket": self.bucket, "Key": self.key(name)}
        if start is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            r = self.s3.get_object(**args)
            body = r["Body"].read()
        except Exception as e:
            if missing_ok and _status(e) == 404:
                return None
            raise self.error(name, e) from None
        size = r["ContentLength"]
        if "ContentRange" in r:
            size = int(r["ContentRange"].rsplit("/", 1)[1])
        return body, ObjectInfo(size, r.get("ETag"))

    def list(self) -> list:
        """Names of the objects directly below the prefix."""
        prefix = self.key("")
        names = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                          Delimiter="/"):
                names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        except Exception as e:
            raise self.error("", e) from None
        return names

    def missing(self, name: str, message: str) -> FlashRemoteError:
        """The error for an object a checkpoint needs and the bucket lacks."""
        where = self.describe(name).rstrip("/")
        return FlashRemoteError(f"{where}: {message} (HTTP 404)", 404, where)

    def error(self, name: str, e: Exception) -> FlashRemoteError:
        status = _status(e)
        what = f"HTTP {status} " if status else ""
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
