"""Handlers that the KCL tests load into ``python -m qldbstream.kcl`` by path (``QLDBSTREAM_HANDLERS``).

``sink`` (``tests.integration.kcl_worker_sink:sink``) is the **idempotent test sink**: every revision
(``rev#<documentId>#<version>``) and block summary (``block#<strandId>#<sequenceNo>``) it is given
becomes one item of a DynamoDB table (moto server), written with a conditional put; when the item
exists already, the write only counts one more attempt (``attempts``) and adds the worker to
``workers``. So the table holds each side effect exactly once, and ``attempts`` shows any redelivery
the de-duplication store did not catch. Settings (``QLDBSTREAM_HANDLER_SINK__<KEY>``):

* ``TABLE``, ``ENDPOINT``: the table and moto server (:func:`create_sink_table` creates it);
* ``WORKER``: the worker's name, written on each item with ``shard`` and ``at`` (epoch seconds);
* ``DOWN_FILE``: while this file exists the sink is down: every call raises a
  :class:`~qldbstream.core.errors.RetryableError` (retried, then the shard halts; the breaker opens).

``noisy`` (``tests.integration.kcl_worker_sink:noisy``) writes to stdout in every way a handler can
(``print``, a fake protocol line on file descriptor 1, a child process's echo) and records what it saw
in the file ``QLDBSTREAM_HANDLER_NOISY__OUTPUT``: the processor must keep all of it off the protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.errors import ConfigurationError, RetryableError

__all__ = ["NoisyHandler", "SinkHandler", "create_sink_table", "effect_key", "noisy", "read_sink", "sink"]


def effect_key(record: JournalRecord) -> str | None:
    """The sink item's key: one per revision and per block summary (CONTROL records are skipped)."""
    if isinstance(record, RevisionDetails):
        return f"rev#{record.document_id}#{record.version}"
    if isinstance(record, BlockSummary):
        return f"block#{record.block_address.strand_id}#{record.block_address.sequence_no}"
    return None


def _client(endpoint: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def create_sink_table(endpoint: str, table: str) -> None:
    client = _client(endpoint)
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def read_sink(endpoint: str, table: str) -> dict[str, dict[str, Any]]:
    """key -> {"shard", "worker", "at", "attempts", "workers"} for every item of the sink table."""
    client = _client(endpoint)
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            items[item["pk"]["S"]] = {
                "shard": item["shard"]["S"],
                "worker": item["worker"]["S"],
                "at": float(item["at"]["N"]),
                "attempts": int(item["attempts"]["N"]),
                "workers": set(item.get("workers", {}).get("SS", [])),
            }
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class SinkHandler(Handler):
    """The idempotent DynamoDB sink (see the module docstring)."""

    name = "sink"

    def __init__(self, settings: Mapping[str, str]) -> None:
        missing = {"table", "endpoint", "worker"} - set(settings)
        if missing:
            raise ConfigurationError(f"sink handler: missing settings {sorted(missing)}")
        self.table = settings["table"]
        self.worker = settings["worker"]
        self.down_file = Path(settings["down_file"]) if settings.get("down_file") else None
        self.client = _client(settings["endpoint"])

    def wants(self, record: JournalRecord) -> bool:
        return effect_key(record) is not None

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        if self.down_file is not None and self.down_file.exists():
            raise RetryableError("the test sink is down")
        for record in records:
            key = effect_key(record)
            if key is not None:
                self._write(key, ctx.shard_id or "")

    def _write(self, key: str, shard: str) -> None:
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "pk": {"S": key},
                    "shard": {"S": shard},
                    "worker": {"S": self.worker},
                    "at": {"N": repr(time.time())},
                    "attempts": {"N": "1"},
                    "workers": {"SS": [self.worker]},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": key}},
                UpdateExpression="ADD attempts :one, workers :w",
                ExpressionAttributeValues={":one": {"N": "1"}, ":w": {"SS": [self.worker]}},
            )


def sink(settings: Mapping[str, str]) -> SinkHandler:
    return SinkHandler(settings)


class NoisyHandler(Handler):
    """Writes to stdout in three ways per batch and records the keys it handled (see the module docstring)."""

    name = "noisy"

    def __init__(self, settings: Mapping[str, str]) -> None:
        self.output = Path(settings["output"])

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        print("noisy handler: print() to stdout")
        os.write(1, b'{"action": "status", "responseFor": "processRecords"}\n')  # a forged protocol line
        subprocess.run(["echo", "noisy handler: a child process writing to stdout"], check=True)
        with self.output.open("a") as out:
            for record in records:
                out.write(json.dumps({"key": effect_key(record), "shard": ctx.shard_id}) + "\n")

    def shard_released(self, shard_id: str) -> None:
        with self.output.open("a") as out:
            out.write(json.dumps({"released": shard_id}) + "\n")


def noisy(settings: Mapping[str, str]) -> NoisyHandler:
    return NoisyHandler(settings)
