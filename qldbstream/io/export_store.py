"""Where a journal export's objects are: a local folder or an S3 prefix, listed and read by key.

:mod:`qldbstream.io.journal_export` walks the export; this module only lists keys (relative to a
folder, or full keys under an S3 prefix) and reads one object's bytes at a time. S3 is read with
boto3 (``aws_client("s3")`` unless a client is given; ``AWS_ENDPOINT_URL_S3`` points it elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qldbstream.core.errors import InputError

__all__ = ["DirStore", "ExportStore", "S3Store", "loads_ion", "read_manifest", "store_for"]


class ExportStore(Protocol):
    location: str

    def keys(self) -> list[str]: ...

    def read(self, key: str) -> bytes | None: ...


@dataclass
class DirStore:
    root: Path
    location: str

    def keys(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, key: str) -> bytes | None:
        path = self.root / key
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError as exc:
            raise InputError(f"cannot read {path} ({exc.strerror})") from None


@dataclass
class S3Store:
    client: Any
    bucket: str
    prefix: str
    location: str

    def keys(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                out.extend(o["Key"] for o in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise InputError(f"{self.location}: cannot list the objects ({exc})") from None
        return out

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            data: bytes = body.read()
            return data
        except self.client.exceptions.NoSuchKey:
            return None
        except (BotoCoreError, ClientError) as exc:
            raise InputError(f"s3://{self.bucket}/{key}: cannot read ({exc})") from None


def store_for(location: str, s3_client: Any | None) -> tuple[ExportStore, str | None]:
    """The store for ``location`` and, if it named one manifest file, that manifest's key."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        if not bucket:
            raise InputError(f"{location}: expected s3://BUCKET/PREFIX")
        if s3_client is None:
            from qldbstream.io.clients import aws_client

            s3_client = aws_client("s3")
        if prefix.endswith(".manifest"):
            return S3Store(
                s3_client, bucket, prefix.rsplit("/", 1)[0] if "/" in prefix else "", location
            ), prefix
        return S3Store(s3_client, bucket, prefix, location), None
    path = Path(location)
    if path.is_file() and path.name.endswith(".manifest"):
        return DirStore(path.parent, location), path.name
    if not path.is_dir():
        raise InputError(f"{location}: no such directory (expected an export's folder or s3://bucket/prefix)")
    return DirStore(path, location), None


def loads_ion(data: bytes) -> list[Any]:
    from amazon.ion import simpleion

    return list(simpleion.loads(data, single_value=False))


def read_manifest(store: ExportStore, key: str) -> Any:
    data = store.read(key)
    if data is None:
        raise InputError(f"{store.location}: cannot read {key}")
    try:  # Ion text, Ion binary, or JSON (which Ion text reads as it is)
        values = loads_ion(data)
    except Exception as exc:
        raise InputError(f"{store.location}/{key}: not an Ion or JSON manifest ({exc})") from None
    return values[0] if len(values) == 1 else values
