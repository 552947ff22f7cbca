"""boto3 clients and short-lived Kinesis streams for tests against the local servers."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from qldbstream.io.kinesis_writer import create_stream

__all__ = ["REGION", "client", "kinesis_stream", "wait_until_active"]

REGION = "us-east-1"


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for ``service`` at ``endpoint`` with dummy credentials and short retries."""
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,  # kinesis-local's PutRecords slows down as a shard fills up
        ),
    )


@contextlib.contextmanager
def kinesis_stream(kinesis: Any, shard_count: int, *, prefix: str = "test") -> Iterator[str]:
    """Create a uniquely named stream of ``shard_count`` shards, wait until ACTIVE, delete it afterwards.

    Use one per test: kinesis-local's PutRecords cost grows with the records a shard holds.
    """
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    create_stream(kinesis, name, shard_count)
    try:
        yield name
    finally:
        with contextlib.suppress(ClientError):
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def wait_until_active(kinesis: Any, name: str, *, timeout: float = 30.0) -> None:
    """Wait for a stream to leave UPDATING (after UpdateShardCount, SplitShard, MergeShards)."""
    deadline = time.monotonic() + timeout
    while True:
        status = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} is still {status} after {timeout:g} s")
        time.sleep(0.05)
