"""The checkpoint store on DynamoDB, shared by any number of workers.

:class:`DynamoDBCheckpointStore` (partition key ``stream`` (S), sort key ``shard_id`` (S)): a
checkpoint never moves backwards and ``shard_ended`` is sticky. Kinesis sequence numbers have up
to 129 decimal digits, more than a DynamoDB number holds (38), so the conditions compare
``position`` (:func:`position_key`): the sequence number zero-padded to 129 digits, ``:``, and the
sub-sequence number zero-padded to 20 - equal lengths, so string order is integer order.

What happens next on errors: throttling, 5xx and connection errors are retried with backoff
(``retry``, an injected ``sleep``; see :mod:`qldbstream.io.dynamodb_table`); when they persist the
call raises :class:`~qldbstream.core.errors.RetryableError`, the pipeline halts the shard and the
batch is delivered again later (nothing is lost). A missing table raises
:class:`~qldbstream.core.errors.ConfigurationError`. Any other ``ClientError`` propagates unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from qldbstream.io.dynamodb_table import CREATE_TIMEOUT, Item, _create_table, _Table
from qldbstream.pipeline.checkpoint import Checkpoint
from qldbstream.pipeline.reliability import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoDBCheckpointStore", "position_key"]

#: Kinesis sequence numbers match ``0|([1-9]\d{0,128})``.
SEQUENCE_DIGITS = 129
SUB_SEQUENCE_DIGITS = 20


def position_key(sequence_number: str | None, sub_sequence_number: int = 0) -> str:
    """A string whose order is :func:`~qldbstream.pipeline.checkpoint.sequence_key` order ("-" before any)."""
    if sequence_number is None:
        return "-"
    return f"{int(sequence_number):0{SEQUENCE_DIGITS}d}:{sub_sequence_number:0{SUB_SEQUENCE_DIGITS}d}"


class DynamoDBCheckpointStore:
    """A :class:`~qldbstream.pipeline.checkpoint.CheckpointStore` on a DynamoDB table (see the module
    docstring)."""

    _NAMES = {  # noqa: RUF012 - a constant
        "#stream": "stream",
        "#seq": "sequence_number",
        "#sub": "sub_sequence_number",
        "#pos": "position",
        "#ended": "shard_ended",
        "#at": "updated_at",
    }

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.table = _Table(client, table, retry or RetryPolicy(max_attempts=8, max_delay=5.0), sleep)
        self.clock = clock

    @staticmethod
    def create_table(
        client: DynamoDBClient,
        table: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = CREATE_TIMEOUT,
    ) -> None:
        """Create the table (on demand, keys ``stream``, ``shard_id``) unless it exists; wait until ACTIVE."""
        _create_table(client, table, [("stream", "HASH"), ("shard_id", "RANGE")], None, sleep, timeout)

    @staticmethod
    def _checkpoint(item: Item) -> Checkpoint:
        return Checkpoint(
            item["shard_id"]["S"],
            item["sequence_number"]["S"] if "sequence_number" in item else None,
            int(item.get("sub_sequence_number", {}).get("N", "0")),
            bool(item.get("shard_ended", {}).get("BOOL", False)),
        )

    def get(self, stream: str, shard_id: str) -> Checkpoint | None:
        client, name = self.table.client, self.table.name
        response = self.table.call(
            "GetItem",
            partial(
                client.get_item,
                TableName=name,
                Key={"stream": {"S": stream}, "shard_id": {"S": shard_id}},
                ConsistentRead=True,
            ),
        )
        item = response.get("Item")
        return None if item is None else self._checkpoint(item)

    def all(self, stream: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        request: dict[str, Any] = {
            "TableName": self.table.name,
            "KeyConditionExpression": "#stream = :stream",
            "ExpressionAttributeNames": {"#stream": "stream"},
            "ExpressionAttributeValues": {":stream": {"S": stream}},
            "ConsistentRead": True,
        }
        while True:
            page = self.table.call("Query", partial(self.table.client.query, **request))
            for item in page.get("Items", []):
                checkpoint = self._checkpoint(item)
                out[checkpoint.shard_id] = checkpoint
            if "LastEvaluatedKey" not in page:
                return out
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` unless the stored one is further along or its shard has ended.

        A shard-end checkpoint always marks the shard ended, and keeps the stored position when
        that one is further along (a checkpoint never moves backwards).
        """
        cp = checkpoint
        values: dict[str, Any] = {
            ":pos": {"S": position_key(cp.sequence_number, cp.sub_sequence_number)},
            ":sub": {"N": str(cp.sub_sequence_number)},
            ":ended": {"BOOL": cp.shard_ended},
            ":at": {"N": repr(self.clock())},
        }
        update = "SET #pos = :pos, #sub = :sub, #ended = :ended, #at = :at"
        if cp.sequence_number is None:
            update += " REMOVE #seq"
        else:
            update += ", #seq = :seq"
            values[":seq"] = {"S": cp.sequence_number}
        condition = "attribute_not_exists(#stream) OR #pos <= :pos"
        if not cp.shard_ended:
            condition = "attribute_not_exists(#stream) OR (#ended = :ended AND #pos <= :pos)"
        key = {"stream": {"S": stream}, "shard_id": {"S": cp.shard_id}}
        for _ in range(3):  # the item can only appear or rise in between: this ends in 2 rounds
            if self.table.update(
                Key=key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=self._NAMES,
                ExpressionAttributeValues=values,
            ):
                return
            if not cp.shard_ended:
                return  # the stored checkpoint is further along, or its shard ended
            if self.table.update(
                Key=key,
                UpdateExpression="SET #ended = :ended, #at = :at",
                ConditionExpression="attribute_exists(#stream)",
                ExpressionAttributeNames={"#stream": "stream", "#ended": "shard_ended", "#at": "updated_at"},
                ExpressionAttributeValues={":ended": values[":ended"], ":at": values[":at"]},
            ):
                return
