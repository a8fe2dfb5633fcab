"""Storage behind one small interface: a local folder or an ``s3://bucket/prefix``.

Objects (PNGs, JSON, HTML) go through boto3 (retries with backoff from settings); Parquet goes through
a pyarrow filesystem that ``filesystem()`` returns, which Ray Data also accepts. Credentials come from
settings or the standard AWS chain (env vars, profile) and are never put in messages.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dynagen.core.settings import DEFAULT_REGION, StorageSettings, storage_from_env

if TYPE_CHECKING:
    import pyarrow.fs


class StorageError(RuntimeError):
    """Storage unreachable or misconfigured; the message is one line."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"bad S3 URI (no bucket): {uri}")
    return bucket, key.strip("/")


def _secret(v) -> str | None:
    return v.get_secret_value() if v is not None else None


@dataclass
class S3Options:
    """Resolved S3 connection options (picklable; shipped to Ray workers)."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None
    secret_access_key: str | None
    connect_timeout_s: float
    max_attempts: int

    @classmethod
    def resolve(cls, s: StorageSettings) -> "S3Options":
        key, secret = _secret(s.access_key_id), _secret(s.secret_access_key)
        if key is None or secret is None:
            # The standard chain (env vars, shared profile) so pyarrow sees the same credentials as boto3.
            import boto3

            creds = boto3.Session().get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                key, secret = frozen.access_key, frozen.secret_key
        endpoint = s.endpoint_url or (storage_from_env("storage.endpoint_url") or (None,))[0]
        region = s.region or (storage_from_env("storage.region") or (DEFAULT_REGION,))[0]
        return cls(endpoint, region, key, secret, s.connect_timeout_s, s.max_attempts)

    def __repr__(self) -> str:  # never show credentials
        return f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


class Storage:
    """A root (local dir or s3 prefix) with object and Parquet helpers. Keys are '/'-separated, relative."""

    def __init__(self, root: str, settings: StorageSettings | None = None):
        self.root = root.rstrip("/") if is_s3(root) else str(Path(root).expanduser().resolve())
        self._settings = settings or StorageSettings()
        self._opts = S3Options.resolve(self._settings) if is_s3(root) else None
        self._client = None

    def __getstate__(self):
        # boto3 clients don't pickle; each Ray worker makes its own.
        return {**self.__dict__, "_client": None}

    # -- naming ---------------------------------------------------------------------------------------
    @property
    def s3(self) -> bool:
        return self._opts is not None

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}" if self.s3 else str(Path(self.root) / key)

    def path(self, key: str) -> str:
        """Path for the pyarrow filesystem (no scheme)."""
        if self.s3:
            bucket, prefix = split_s3(self.root)
            return "/".join(p for p in (bucket, prefix, key) if p)
        return str(Path(self.root) / key)

    # -- clients ----------------------------------------------------------------------------------------
    def _boto(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            o = self._opts
            self._client = boto3.client(
                "s3",
                endpoint_url=o.endpoint_url,
                region_name=o.region,
                aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key,
                config=Config(
                    connect_timeout=o.connect_timeout_s,
                    read_timeout=max(30.0, o.connect_timeout_s),
                    retries={"max_attempts": o.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def filesystem(self) -> "pyarrow.fs.FileSystem":
        import pyarrow.fs as pafs

        if not self.s3:
            return pafs.LocalFileSystem()
        o = self._opts
        kw = dict(region=o.region, connect_timeout=o.connect_timeout_s, request_timeout=max(30.0, o.connect_timeout_s),
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=o.max_attempts))
        if o.endpoint_url:
            scheme, _, host = o.endpoint_url.partition("://")
            kw.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        if o.access_key_id:
            kw.update(access_key=o.access_key_id, secret_key=o.secret_access_key)
        return pafs.S3FileSystem(**kw)

    # -- checks -----------------------------------------------------------------------------------------
    def check(self, create: bool = False) -> None:
        """Fail fast with one line if the endpoint is unreachable or the bucket is missing."""
        if not self.s3:
            if create:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            return
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        bucket, _ = split_s3(self.root)
        where = self._opts.endpoint_url or "AWS S3"
        try:
            # One quick attempt: a down endpoint should fail in seconds, not after every retry.
            import boto3
            from botocore.config import Config

            o = self._opts
            quick = boto3.client(
                "s3", endpoint_url=o.endpoint_url, region_name=o.region, aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key,
                config=Config(connect_timeout=o.connect_timeout_s, read_timeout=o.connect_timeout_s,
                              retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
            )
            quick.head_bucket(Bucket=bucket)
        except EndpointConnectionError:
            raise StorageError(f"cannot reach S3 endpoint {where}") from None
        except NoCredentialsError:
            raise StorageError(
                f"no S3 credentials for {self.root} in this environment: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or storage.access_key_id / storage.secret_access_key, or an AWS profile)"
            ) from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"S3 bucket '{bucket}' does not exist at {where}") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageError(f"S3 access denied to bucket '{bucket}' at {where} (check credentials)") from None
            raise StorageError(f"S3 error {code} on bucket '{bucket}' at {where}") from None
        except BotoCoreError as e:
            raise StorageError(f"S3 endpoint {where} failed: {type(e).__name__}") from None

    # -- objects ----------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write one object atomically (S3 PUTs are atomic; locally write-then-rename). Returns its URI."""
        if self.s3:
            from botocore.exceptions import BotoCoreError, ClientError

            bucket, prefix = split_s3(self.root)
            full = f"{prefix}/{key}" if prefix else key
            try:
                self._boto().put_object(Bucket=bucket, Key=full, Body=data, ContentType=content_type)
            except (BotoCoreError, ClientError) as e:
                where = self._opts.endpoint_url or "AWS S3"
                raise StorageError(
                    f"writing s3://{bucket}/{full} via {where} failed after {self._opts.max_attempts} attempts: "
                    f"{type(e).__name__}"
                ) from None
        else:
            dest = Path(self.root) / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        if self.s3:
            bucket, prefix = split_s3(self.root)
            full = f"{prefix}/{key}" if prefix else key
            return self._boto().get_object(Bucket=bucket, Key=full)["Body"].read()
        return (Path(self.root) / key).read_bytes()

    def list(self, prefix: str) -> list[str]:
        """Keys (relative to the root) under ``prefix``; temp files excluded."""
        if self.s3:
            bucket, root_prefix = split_s3(self.root)
            full = "/".join(p for p in (root_prefix, prefix.strip("/")) if p) + "/"
            keys = []
            for page in self._boto().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    keys.append(obj["Key"][len(root_prefix) + 1 if root_prefix else 0 :])
            return sorted(keys)
        base = Path(self.root)
        d = base / prefix
        if not d.exists():
            return []
        return sorted(
            str(p.relative_to(base)) for p in d.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> None:
        if self.s3:
            bucket, prefix = split_s3(self.root)
            self._boto().delete_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key)
        else:
            (Path(self.root) / key).unlink(missing_ok=True)
