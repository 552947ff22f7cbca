"""Where exported files go: a local directory or an S3 prefix, behind one small interface.

Every write replaces an object whole and atomically (S3 ``PutObject``; locally a temporary file
renamed over the target), so a reader - or a restarted export - sees an old file or a new one,
never half of one. That is what lets the export and the analytics Parquet sink rewrite a file
under a deterministic name instead of adding a second copy.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from qldbstream.api import ConfigurationError

__all__ = ["LocalStorage", "S3Storage", "Storage", "open_storage"]


class Storage(Protocol):
    """Objects by relative path (``/``-separated)."""

    def put(self, path: str, data: bytes) -> None: ...

    def get(self, path: str) -> bytes | None:
        """The object's bytes, ``None`` when it does not exist."""
        ...

    def delete(self, path: str) -> None:
        """Remove the object (no error when it does not exist)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of every object under ``prefix``, sorted."""
        ...

    def url(self, path: str = "") -> str:
        """Where ``path`` is, for messages (``s3://bucket/key`` or a file path)."""
        ...


class LocalStorage:
    """A directory; files are written to a temporary name, fsynced and renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError(f"{path!r} is outside {self.root}")
        return target

    def put(self, path: str, data: bytes) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(path).unlink()

    def list(self, prefix: str = "") -> list[str]:
        folder = self.root / prefix.rpartition("/")[0]  # walk only what can match
        if not folder.is_dir():
            return []
        out = []
        for p in folder.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and rel.startswith(prefix) and not p.name.startswith(".tmp-"):
                out.append(rel)
        return sorted(out)

    def url(self, path: str = "") -> str:
        return str(self.root / path) if path else str(self.root)


class S3Storage:
    """An S3 bucket and key prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def put(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + path, Body=data)

    def get(self, path: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + path)
        except self.client.exceptions.NoSuchKey:
            return None
        body: bytes = response["Body"].read()
        return body

    def delete(self, path: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + path)

    def list(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            out.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(out)

    def url(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{path}"


def open_storage(
    target: str, *, client: Any = None, endpoint_url: str | None = None, region: str | None = None
) -> Storage:
    """``s3://bucket/prefix`` (``client`` or a new boto3 S3 client) or a local directory path."""
    if target.startswith("s3://"):
        bucket, _, prefix = target[5:].partition("/")
        if not bucket:
            raise ConfigurationError(f"{target!r}: an S3 destination is s3://BUCKET[/PREFIX]")
        if client is None:
            from qldbstream.api.aws import aws_client

            client = aws_client("s3", endpoint_url=endpoint_url, region_name=region)
        return S3Storage(client, bucket, prefix)
    if "://" in target:
        raise ConfigurationError(f"{target!r}: give s3://BUCKET/PREFIX or a local directory")
    if not target:
        raise ConfigurationError("no destination given")
    return LocalStorage(target)
