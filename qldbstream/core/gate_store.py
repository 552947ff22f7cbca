"""The delivery gate's store port and what it parks: :class:`GateStore` (block verdicts and parked
records; in memory in :mod:`qldbstream.pipeline.stores`, on DynamoDB in
:mod:`qldbstream.io.gate_dynamodb`) and :class:`ParkedRecord` (a user record waiting for its
block's verdict, with every byte needed to deliver it later, and its JSON-safe item form).

The verdicts themselves and how a revision is judged are in :mod:`qldbstream.core.gate`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qldbstream.core.decode import JournalRecord
from qldbstream.core.gate import BlockKey, BlockVerdict, Link
from qldbstream.core.records import KinesisRecord, UserRecord

__all__ = ["GateStore", "ParkedRecord"]


@dataclass(slots=True)
class ParkedRecord:
    """A user record waiting for its block's verdict, with every byte needed to deliver it later."""

    key: BlockKey
    data: bytes
    shard_id: str | None
    sequence_number: str
    sub_sequence_number: int
    partition_key: str = ""
    stream_arn: str | None = None
    arrival: float | None = None
    source: str = ""
    #: wall-clock seconds when it was first parked (for the maximum wait)
    parked_at: float = 0.0
    #: "revision" or "block" (a block summary waits for its successor under chain-confirmed)
    kind: str = "revision"
    #: in-memory stores keep the decoded, verified record (no second decode on release); never stored
    decoded: tuple[UserRecord, JournalRecord] | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        """The user record's identity: its stream, shard and position."""
        return (
            f"{self.stream_arn or ''}|{self.shard_id or ''}|{self.sequence_number}|{self.sub_sequence_number}"
        )

    @classmethod
    def of(
        cls, key: BlockKey, user: UserRecord, kind: str, now: float, shard_id: str | None = None
    ) -> ParkedRecord:
        """``shard_id``: the shard the runtime read it from (default: the Kinesis record's)."""
        kr = user.parent
        return cls(
            key,
            user.data,
            shard_id if shard_id is not None else kr.shard_id,
            user.sequence_number,
            user.sub_sequence_number,
            user.partition_key,
            kr.stream_arn,
            kr.approximate_arrival_timestamp,
            kr.source,
            now,
            kind,
        )

    def user_record(self) -> UserRecord:
        """The user record again; its Kinesis record holds just these bytes (as the KCL hands them)."""
        parent = KinesisRecord(
            self.data,
            self.sequence_number,
            self.partition_key,
            self.shard_id,
            self.arrival,
            None,
            self.stream_arn,
            self.source,
            self.sub_sequence_number,
        )
        return UserRecord(
            self.data, self.sequence_number, self.sub_sequence_number, self.partition_key, None, False, parent
        )

    def as_item(self) -> dict[str, Any]:
        return {
            "strandId": self.key[0],
            "sequenceNo": self.key[1],
            "data": base64.b64encode(self.data).decode("ascii"),
            "shardId": self.shard_id,
            "sequenceNumber": self.sequence_number,
            "subSequenceNumber": self.sub_sequence_number,
            "partitionKey": self.partition_key,
            "streamArn": self.stream_arn,
            "arrival": self.arrival,
            "source": self.source,
            "parkedAt": self.parked_at,
            "kind": self.kind,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ParkedRecord:
        arrival = item.get("arrival")
        return cls(
            (item["strandId"], int(item["sequenceNo"])),
            base64.b64decode(item["data"]),
            item.get("shardId"),
            item["sequenceNumber"],
            int(item["subSequenceNumber"]),
            item.get("partitionKey") or "",
            item.get("streamArn"),
            None if arrival is None else float(arrival),
            item.get("source") or "",
            float(item["parkedAt"]),
            item.get("kind") or "revision",
        )


class GateStore(Protocol):
    """Where block verdicts and parked records live: in memory
    (:class:`qldbstream.pipeline.stores.InMemoryGateStore`), or DynamoDB for several processes.

    Contract (the same tests run against every implementation):

    * :meth:`put_block` stores a verdict unless one is stored for that block already, and returns
      the stored one (the first writer wins; a different ``blockHash`` at the same address is for
      the caller to report);
    * :meth:`set_link` moves ``link`` from ``unknown`` to ``confirmed`` or ``broken``; ``broken``
      is final (a confirmed block later found with a broken link becomes broken);
    * :meth:`park` is idempotent by :attr:`ParkedRecord.id`; a record parked twice keeps its first
      ``parked_at``; :meth:`unpark` removes records by id (absent ids are ignored);
    * reads are strongly consistent: a record parked before a verdict was stored is returned by a
      :meth:`parked` call made after that verdict was stored.
    """

    @property
    def durable(self) -> bool:
        """True when a parked record survives this process (the checkpoint may then pass it)."""
        ...

    def blocks(self, keys: Sequence[BlockKey]) -> dict[BlockKey, BlockVerdict]: ...

    def put_block(self, verdict: BlockVerdict) -> BlockVerdict: ...

    def set_link(self, key: BlockKey, link: Link) -> None: ...

    def park(self, records: Sequence[ParkedRecord]) -> None: ...

    def parked(self, key: BlockKey) -> list[ParkedRecord]: ...

    def unpark(self, key: BlockKey, ids: Sequence[str]) -> None: ...

    def expired(self, parked_before: float, limit: int) -> list[ParkedRecord]:
        """Up to ``limit`` parked records parked before ``parked_before`` (epoch seconds), oldest first."""
        ...
