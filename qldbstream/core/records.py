"""Kinesis records and user records: the units every stage passes along.

Vocabulary follows Kinesis: a *Kinesis record* is what a shard holds (``GetRecords``, a Lambda
event, a KCL ``processRecords`` message); a *user record* is one record the producer put, which
is the Kinesis record itself unless the producer (QLDB, by default) packed several into one KPL
aggregate. User records of one aggregate share the Kinesis record's sequence number and are told
apart by their sub-sequence number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The three classes below are built for every record on the hot path. They are plain slotted
# dataclasses - not frozen ones, whose __init__ costs ~3x as much - and must be treated as
# immutable: nothing in qldbstream assigns to their fields after construction.

__all__ = ["KinesisRecord", "Position", "UserRecord"]


@dataclass(slots=True, unsafe_hash=True)
class Position:
    """Where a record came from: enough to find it again, report it and replay it."""

    source: str
    shard_id: str | None = None
    sequence_number: str | None = None
    sub_sequence_number: int | None = None

    def describe(self) -> str:
        parts = [self.source]
        if self.shard_id:
            parts.append(f"shard {self.shard_id}")
        if self.sequence_number is not None:
            seq = f"sequence number {self.sequence_number}"
            if self.sub_sequence_number is not None:
                seq += f"/{self.sub_sequence_number}"
            parts.append(seq)
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "shardId": self.shard_id,
            "sequenceNumber": self.sequence_number,
            "subSequenceNumber": self.sub_sequence_number,
        }


@dataclass(slots=True, unsafe_hash=True)
class KinesisRecord:
    """One record as a Kinesis shard holds it (possibly a KPL aggregate)."""

    data: bytes
    #: Empty when the record did not come from a stream (a raw Ion file, say).
    sequence_number: str
    partition_key: str = ""
    shard_id: str | None = None
    #: Seconds since the epoch, as Kinesis reports ``ApproximateArrivalTimestamp``.
    approximate_arrival_timestamp: float | None = None
    explicit_hash_key: str | None = None
    stream_arn: str | None = None
    #: Human-readable origin: ``file.json line 3``, ``lambda event``, ``stream NAME``.
    source: str = ""
    #: Set when the runtime hands over user records already deaggregated (the KCL does): this user
    #: record's sub-sequence number, which :func:`~qldbstream.core.deaggregate.deaggregate` keeps, so the
    #: checkpoint and the DLQ envelope name the user record, not sub-sequence 0 of its aggregate.
    sub_sequence_number: int | None = None

    @property
    def position(self) -> Position:
        return Position(self.source, self.shard_id, self.sequence_number or None, self.sub_sequence_number)


@dataclass(slots=True, unsafe_hash=True)
class UserRecord:
    """One user record: a complete QLDB journal record (one Ion binary stream)."""

    data: bytes
    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    explicit_hash_key: str | None
    aggregated: bool
    #: The Kinesis record this user record came out of (kept for the dead-letter envelope).
    parent: KinesisRecord = field(repr=False, compare=False)

    @property
    def position(self) -> Position:
        seq = self.sequence_number or None
        sub = self.sub_sequence_number if (seq is not None or self.aggregated) else None
        return Position(self.parent.source, self.parent.shard_id, seq, sub)

    @property
    def shard_id(self) -> str | None:
        return self.parent.shard_id
