"""The delivery gate's DynamoDB items: block verdicts and parked records as items, and back.

The table layout is described in :mod:`qldbstream.io.gate_dynamodb`, whose
:class:`~qldbstream.io.gate_dynamodb.DynamoDBGateStore` reads and writes these items. Here: the
keys (``pk`` / ``sk``, the expiry index's ``bucket``), the attributes each kind of item holds, the
conversions and the item size DynamoDB charges. No I/O.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from qldbstream.core.gate import BlockKey, BlockVerdict, Link
from qldbstream.core.gate_store import ParkedRecord
from qldbstream.io.dynamodb_table import Item

__all__ = [
    "EXPIRY_BUCKETS",
    "PARKED_ATTRIBUTES",
    "PARKED_SK_PREFIX",
    "VERDICT_ATTRIBUTES",
    "VERDICT_SK",
    "attribute_names",
    "block_pk",
    "block_verdict",
    "dynamo_number",
    "expiry_bucket",
    "item_size",
    "parked_item",
    "parked_record",
    "parked_sk",
    "verdict_item",
]

#: How many index partitions parked records are spread over (changing it strands parked records).
EXPIRY_BUCKETS = 16
#: DynamoDB's limit on a sort key's length (bytes).
_MAX_SORT_KEY_BYTES = 1024

#: the sort key of a block's verdict item, and the prefix of its parked records' sort keys
VERDICT_SK = "verdict"
PARKED_SK_PREFIX = "parked#"
#: what a verdict item and a parked item hold (the projections of the reads)
VERDICT_ATTRIBUTES = (
    *("pk", "sk", "strandId", "sequenceNo", "blockHash", "previousBlockHash", "transactionId"),
    *("failed", "entries", "tables", "link", "ttl"),
)
PARKED_ATTRIBUTES = (
    *("pk", "sk", "strandId", "sequenceNo", "data", "shardId", "sequenceNumber", "subSequenceNumber"),
    *("partitionKey", "streamArn", "arrival", "source", "parkedAt", "kind", "ttl"),
)


def item_size(item: Item) -> int:
    """The size DynamoDB charges for ``item`` (attribute names plus values), as documented."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "S":
        return len(str(v).encode())
    if kind == "B":
        return len(v)
    if kind == "N":
        return min(21, (len(str(v).lstrip("-").replace(".", "").strip("0")) + 1) // 2 + 1)
    if kind == "L":
        return 3 + sum(1 + _value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(e) for k, e in v.items())
    return 1  # BOOL, NULL


def dynamo_number(x: float) -> str:
    """A float as a DynamoDB number, positional (no exponent), exactly as ``repr`` rounds it."""
    return format(Decimal(repr(float(x))), "f")


def block_pk(key: BlockKey) -> str:
    return f"block#{key[0]}#{key[1]}"


def parked_sk(record_id: str) -> str:
    sk = PARKED_SK_PREFIX + record_id
    if len(sk.encode()) > _MAX_SORT_KEY_BYTES:
        sk = PARKED_SK_PREFIX + "sha256:" + hashlib.sha256(record_id.encode()).hexdigest()
    return sk


def expiry_bucket(record_id: str) -> str:
    return f"{zlib.crc32(record_id.encode()) % EXPIRY_BUCKETS:02d}"


def attribute_names(attributes: Sequence[str]) -> dict[str, str]:
    return {f"#a{i}": name for i, name in enumerate(attributes)}


def verdict_item(verdict: BlockVerdict, expires: dict[str, str]) -> Item:
    """A block verdict as its ``verdict`` item (``expires``: its ``ttl`` attribute)."""
    item: Item = {
        "pk": {"S": block_pk(verdict.key)},
        "sk": {"S": VERDICT_SK},
        "strandId": {"S": verdict.strand_id},
        "sequenceNo": {"N": str(verdict.sequence_no)},
        "blockHash": {"B": verdict.block_hash},
        "previousBlockHash": {"B": verdict.previous_hash},
        "transactionId": {"S": verdict.transaction_id},
        "failed": {"S": verdict.failed},
        "entries": {"L": [{"M": {"h": {"B": h}, "d": {"S": doc}}} for h, doc in verdict.entries.items()]},
        "link": {"S": verdict.link.value},
        "ttl": expires,
    }
    if verdict.tables is not None:
        item["tables"] = {
            "M": {
                doc: {"L": [{"S": name}, {"S": table_id}]} for doc, (name, table_id) in verdict.tables.items()
            }
        }
    return item


def block_verdict(item: Item) -> BlockVerdict:
    """The block verdict a ``verdict`` item holds."""
    tables = item.get("tables")
    return BlockVerdict(
        item["strandId"]["S"],
        int(item["sequenceNo"]["N"]),
        bytes(item["blockHash"]["B"]),
        bytes(item["previousBlockHash"]["B"]),
        item["transactionId"]["S"],
        item["failed"]["S"],
        {bytes(e["M"]["h"]["B"]): e["M"]["d"]["S"] for e in item["entries"]["L"]},
        None if tables is None else {doc: (t["L"][0]["S"], t["L"][1]["S"]) for doc, t in tables["M"].items()},
        Link(item["link"]["S"]),
    )


def parked_item(record: ParkedRecord, expires: dict[str, str]) -> Item:
    """A parked record as its ``parked#<record id>`` item (``expires``: its ``ttl`` attribute)."""
    item: Item = {
        "pk": {"S": block_pk(record.key)},
        "sk": {"S": parked_sk(record.id)},
        "strandId": {"S": record.key[0]},
        "sequenceNo": {"N": str(record.key[1])},
        "data": {"B": record.data},
        "sequenceNumber": {"S": record.sequence_number},
        "subSequenceNumber": {"N": str(record.sub_sequence_number)},
        "partitionKey": {"S": record.partition_key},
        "source": {"S": record.source},
        "parkedAt": {"N": dynamo_number(record.parked_at)},
        "kind": {"S": record.kind},
        "bucket": {"S": expiry_bucket(record.id)},
        "ttl": expires,
    }
    if record.shard_id is not None:
        item["shardId"] = {"S": record.shard_id}
    if record.stream_arn is not None:
        item["streamArn"] = {"S": record.stream_arn}
    if record.arrival is not None:
        item["arrival"] = {"N": dynamo_number(record.arrival)}
    return item


def parked_record(item: Item) -> ParkedRecord:
    """The parked record a ``parked#`` item holds."""

    def optional(name: str) -> str | None:
        value = item.get(name)
        return None if value is None else str(value["S"])

    arrival = item.get("arrival")
    return ParkedRecord(
        (item["strandId"]["S"], int(item["sequenceNo"]["N"])),
        bytes(item["data"]["B"]),
        optional("shardId"),
        item["sequenceNumber"]["S"],
        int(item["subSequenceNumber"]["N"]),
        item["partitionKey"]["S"],
        optional("streamArn"),
        None if arrival is None else float(arrival["N"]),
        item["source"]["S"],
        float(item["parkedAt"]["N"]),
        item["kind"]["S"],
    )
