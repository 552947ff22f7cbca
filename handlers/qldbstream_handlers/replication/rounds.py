"""Planning the puts: order-preserving rounds of ``PutRecords`` entries (pure, no I/O).

Kinesis keeps the order of one partition key within a shard, but a ``PutRecords`` call whose
entries partly fail is retried with only the failed entries, which can put a record after a
later record of the same key (:mod:`qldbstream.io.kinesis_writer`). So the buffered records are
put in *rounds*: one ``PutRecords`` round holds at most one entry per partition key (without
aggregation) or per target shard (with it), and a round starts only after the previous one was
fully written. Usually a flush is one round; a document updated several times within one batch
adds a round per extra version.

With re-aggregation, user records are grouped by the shard their own partition key maps to
(the target's :class:`ShardMap`), each group is packed with :func:`qldbstream.core.aggregate.pack`,
and every aggregate is put with its first user record's partition key - so each user record
lands on the shard it would have reached un-aggregated, exactly as the KPL does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from qldbstream.api.kinesis import MAX_RECORD_BYTES, PutEntry, pack

__all__ = ["Outgoing", "Round", "ShardMap", "plan_rounds"]

_HASH_SPACE = 2**128


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One journal record waiting to be republished: the user record bytes exactly as received."""

    #: the de-duplication key (:func:`qldbstream.core.dedupe.dedupe_key`): ``rev#<documentId>#<version>``, ...
    key: str
    partition_key: str
    data: bytes
    #: the source shard it came from (dropped when that shard is released)
    shard_id: str | None = None
    #: a revision's document and version (``None`` for block summaries and CONTROL records): a lane
    #: writes each document's versions in version order and never an older one after a newer one
    document_id: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Round:
    """One ``PutRecords`` round: the entries to put and the keys of the user records they carry."""

    entries: tuple[PutEntry, ...]
    keys: tuple[str, ...]

    @property
    def user_records(self) -> int:
        return len(self.keys)


class ShardMap:
    """The open shards of a stream as hash-key ranges: which shard a partition key goes to."""

    def __init__(self, ranges: Sequence[tuple[int, int, str]]) -> None:
        if not ranges:
            raise ValueError("a stream has at least one open shard")
        #: ``(starting hash key, ending hash key, shard id)`` sorted by start
        self.ranges = sorted(ranges)

    @staticmethod
    def hash_key(partition_key: str) -> int:
        """Kinesis's rule: the MD5 of the UTF-8 partition key as a 128-bit big-endian integer."""
        return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")  # noqa: S324

    def shard_for(self, partition_key: str) -> str:
        key = self.hash_key(partition_key)
        for start, end, shard_id in self.ranges:
            if start <= key <= end:
                return shard_id
        return self.ranges[-1][2]  # a gap only appears mid-reshard; the last shard is as good a guess

    @classmethod
    def uniform(cls, shards: int) -> ShardMap:
        """``shards`` even ranges, as CreateStream makes them (tests and the simulator)."""
        step = _HASH_SPACE // shards
        ranges = []
        for i in range(shards):
            end = _HASH_SPACE - 1 if i == shards - 1 else (i + 1) * step - 1
            ranges.append((i * step, end, f"shardId-{i:012d}"))
        return cls(ranges)


def plan_rounds(
    items: Sequence[Outgoing], *, shard_map: ShardMap | None = None, max_record_bytes: int = MAX_RECORD_BYTES
) -> list[Round]:
    """Group ``items`` (stream order) into rounds; with ``shard_map`` the user records are aggregated."""
    if shard_map is None:
        return _plain_rounds(items)
    return _aggregated_rounds(items, shard_map, max_record_bytes)


def _plain_rounds(items: Sequence[Outgoing]) -> list[Round]:
    rounds: list[list[Outgoing]] = []
    seen: dict[str, int] = {}
    for item in items:
        index = seen.get(item.partition_key, 0)
        seen[item.partition_key] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return [
        Round(tuple(PutEntry(i.data, i.partition_key) for i in group), tuple(i.key for i in group))
        for group in rounds
    ]


def _aggregated_rounds(items: Sequence[Outgoing], shard_map: ShardMap, max_bytes: int) -> list[Round]:
    groups: dict[str, list[Outgoing]] = {}
    for item in items:
        groups.setdefault(shard_map.shard_for(item.partition_key), []).append(item)
    per_shard: list[list[tuple[PutEntry, tuple[str, ...]]]] = []
    for group in groups.values():
        aggregates = []
        position = 0
        for agg in pack(((i.partition_key, None, i.data) for i in group), max_bytes=max_bytes):
            keys = tuple(i.key for i in group[position : position + agg.count])
            position += agg.count
            aggregates.append((PutEntry(agg.data, agg.partition_key, agg.explicit_hash_key), keys))
        per_shard.append(aggregates)
    rounds = []
    for index in range(max((len(a) for a in per_shard), default=0)):
        members = [a[index] for a in per_shard if index < len(a)]
        rounds.append(
            Round(tuple(entry for entry, _ in members), tuple(key for _, keys in members for key in keys))
        )
    return rounds
