"""Outputs: Lambda Kinesis events as JSON Lines, or PutRecords into a real Kinesis stream.

Events look like the ones Lambda's Kinesis event source mapping delivers (qldb-stream-format.md
§2.4): each event holds up to ``batch_size`` records *of one shard*, in sequence order; events
of different shards interleave by the arrival time of their first record, as parallel shard
pollers would deliver them. One event per line.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.delivery import Delivery

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

    from qldbstream.io.kinesis_writer import PutResult

__all__ = ["EventSource", "lambda_events", "put_to_stream", "write_jsonl"]


@dataclass(frozen=True, slots=True)
class EventSource:
    """The names a Lambda event carries: region, account, Kinesis stream, function role."""

    region: str = "eu-west-1"
    account: str = "123456789012"
    stream_name: str = "simbank-journal"
    role_name: str = "qldbstream-consumer-role"

    @property
    def stream_arn(self) -> str:
        return f"arn:aws:kinesis:{self.region}:{self.account}:stream/{self.stream_name}"


def _record(d: Delivery, source: EventSource) -> dict[str, Any]:
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": d.partition_key,
            "sequenceNumber": d.sequence_number,
            "data": base64.b64encode(d.data).decode("ascii"),
            "approximateArrivalTimestamp": round(d.arrival_ms / 1000, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{d.shard_id}:{d.sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{source.account}:role/{source.role_name}",
        "awsRegion": source.region,
        "eventSourceARN": source.stream_arn,
    }


def lambda_events(
    deliveries: Sequence[Delivery], source: EventSource, batch_size: int = 100
) -> Iterator[dict[str, Any]]:
    """Lambda Kinesis events: per shard, batches of at most ``batch_size`` records in order."""
    if not 1 <= batch_size <= 10_000:
        raise ConfigurationError(f"the batch size must be between 1 and 10000, not {batch_size}")
    per_shard: dict[str, list[Delivery]] = {}
    for d in deliveries:
        per_shard.setdefault(d.shard_id, []).append(d)
    batches: list[tuple[int, str, list[Delivery]]] = []
    for shard, items in per_shard.items():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batches.append((chunk[0].arrival_ms, shard, chunk))
    batches.sort(key=lambda b: (b[0], b[1]))
    for _, _, chunk in batches:
        yield {"Records": [_record(d, source) for d in chunk]}


def write_jsonl(
    out: IO[str], deliveries: Sequence[Delivery], source: EventSource, batch_size: int = 100
) -> int:
    """Write one event per line; return the number of events."""
    n = 0
    for event in lambda_events(deliveries, source, batch_size):
        out.write(json.dumps(event, separators=(",", ":")))
        out.write("\n")
        n += 1
    return n


def put_to_stream(client: KinesisClient, stream_name: str, deliveries: Sequence[Delivery]) -> list[PutResult]:
    """PutRecords every delivery in order (Kinesis assigns shards and sequence numbers)."""
    from qldbstream.io.kinesis_writer import PutEntry, put_records

    entries = [PutEntry(d.data, d.partition_key, d.explicit_hash_key) for d in deliveries]
    return put_records(client, stream_name, entries)
