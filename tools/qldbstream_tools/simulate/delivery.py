"""Delivery: how the journal records reach Kinesis (aggregation, duplicates, order, shards).

* **Aggregated** (QLDB's default): one KPL aggregate per block - the BLOCK_SUMMARY, then its
  REVISION_DETAILS in ``revisionSummaries`` order - with each user record's partition key the
  hex of its hash (:mod:`qldbstream_tools.simulate.stream`), no explicit hash keys, and an arbitrary
  outer partition key (a seeded random 64-hex value, as in the 2021 real sample). A block too
  big for one Kinesis record is split by :func:`qldbstream.core.aggregate.pack`. CONTROL records go
  as plain records [INF: no real one has been published].
* **Not aggregated**: one Kinesis record per journal record, partition key = the hex hash [INF].
* **Duplicates** (at-least-once): each delivery unit is, with probability ``duplicate_rate``,
  put again 1..``duplicate_delay`` units later (same bytes, new sequence number).
* **Out of order**: with ``reorder_window`` W, a unit can be overtaken only by units at most W
  places after it in journal order (W = 1 swaps neighbours, 0 keeps the order). Without
  aggregation this separates blocks from their revisions.
* **Shards**: Kinesis's rule - the MD5 of the partition key as a 128-bit big-endian integer,
  shards owning equal hash-key ranges (shard i starts at ``i * (2**128 // N)``).
* **Sequence numbers** (JSONL output only; a real stream assigns its own): 56 digits, increasing
  per shard, in the layout Kinesis uses (and kinesalite reproduces): ``2`` + shard creation time
  + shard index + per-shard counter + ``00`` + arrival second + shard index + ``2``, in hex.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from qldbstream.core.aggregate import pack
from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.stream import StreamRecord

__all__ = ["Delivery", "DeliveryOptions", "deliver", "shard_for", "shard_id"]

_HASH_SPACE = 2**128


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How records are put into Kinesis."""

    aggregate: bool = True
    shards: int = 1
    duplicate_rate: float = 0.0
    duplicate_delay: int = 20
    reorder_window: int = 0
    #: Write CONTROL COMPLETED at the end (a bounded stream reached its ExclusiveEndTime).
    completed: bool = True

    def validate(self) -> None:
        if not 1 <= self.shards <= 500:
            raise ConfigurationError(f"shards must be between 1 and 500, not {self.shards}")
        if not 0.0 <= self.duplicate_rate <= 1.0:
            raise ConfigurationError(f"the duplicate rate must be between 0 and 1, not {self.duplicate_rate}")
        if self.reorder_window < 0 or self.duplicate_delay < 1:
            raise ConfigurationError("reorder_window must be >= 0 and duplicate_delay >= 1")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Kinesis record as put: bytes, keys, where it landed, what journal records it carries."""

    data: bytes
    partition_key: str
    #: Index of its delivery unit in journal order (duplicates share it).
    unit: int
    duplicate: bool
    #: Indexes into the stream's records (journal order) of the user records it carries.
    records: tuple[int, ...]
    aggregated: bool
    shard_id: str
    sequence_number: str
    arrival_ms: int
    explicit_hash_key: str | None = None


def shard_for(partition_key: str, shards: int) -> int:
    """The shard (0-based) Kinesis routes ``partition_key`` to in a stream of ``shards`` even shards."""
    key = int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")  # noqa: S324 - Kinesis's rule
    return min(key // (_HASH_SPACE // shards), shards - 1)


def shard_id(index: int) -> str:
    return f"shardId-{index:012d}"


def sequence_number(shard_created_s: int, shard: int, counter: int, arrival_s: int) -> str:
    """A 56-digit Kinesis-style sequence number (see the module docstring)."""
    text = f"2{shard_created_s:09x}{shard % 16:x}{counter:016x}00{arrival_s:09x}{shard:08x}2"
    return str(int(text, 16))


@dataclass(frozen=True, slots=True)
class _Unit:
    data: bytes
    partition_key: str
    records: tuple[int, ...]
    aggregated: bool
    time_ms: int


def _units(
    records: Sequence[StreamRecord], options: DeliveryOptions, rng: random.Random, corrupt: set[int]
) -> list[_Unit]:
    units: list[_Unit] = []
    i = 0
    while i < len(records):
        rec = records[i]
        if not options.aggregate or rec.record_type == "CONTROL":
            units.append(_Unit(rec.data, rec.partition_key, (i,), False, rec.time_ms))
            i += 1
            continue
        j = i + 1
        while j < len(records) and records[j].record_type == "REVISION_DETAILS":
            j += 1
        outer = rng.getrandbits(256).to_bytes(32, "big").hex()
        entries = [(records[k].partition_key, None, records[k].data) for k in range(i, j)]
        k = i
        for agg in pack(entries, partition_key=outer):
            data = agg.data
            if rec.sequence_no in corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])  # a wrong MD5 trailer: V1 fails
            units.append(_Unit(data, outer, tuple(range(k, k + agg.count)), True, rec.time_ms))
            k += agg.count
        i = j
    return units


def deliver(
    records: Sequence[StreamRecord],
    options: DeliveryOptions,
    rng: random.Random,
    *,
    shard_created_ms: int,
    corrupt_md5: set[int] | None = None,
) -> list[Delivery]:
    """The Kinesis records, in the order they are put, with shard, sequence number and arrival."""
    options.validate()
    units = _units(records, options, rng, corrupt_md5 or set())
    # (put order key, unit, duplicate?) - duplicates go 1..delay units later; the reorder window
    # then adds a uniform jitter to every key.
    keyed: list[tuple[float, int, bool]] = []
    for u in range(len(units)):
        keyed.append((float(u), u, False))
        if options.duplicate_rate and rng.random() < options.duplicate_rate:
            keyed.append((u + rng.uniform(1, options.duplicate_delay), u, True))
    if options.reorder_window:
        # key + U(0, W+1): unit a can pass unit b < a only if a - b < W + 1, i.e. a - b <= W.
        w = options.reorder_window + 1
        keyed = [(key + rng.uniform(0, w), u, dup) for key, u, dup in keyed]
    keyed.sort()
    counters = [0] * options.shards
    created_s = shard_created_ms // 1000
    out: list[Delivery] = []
    clock = 0
    for _, u, dup in keyed:
        unit = units[u]
        # Arrival: after the commit plus QLDB's put latency, and never before the previous put.
        clock = max(clock + rng.randint(1, 15), unit.time_ms + rng.randint(120, 900))
        shard = shard_for(unit.partition_key, options.shards)
        counters[shard] += rng.randint(1, 64)
        out.append(
            Delivery(
                unit.data,
                unit.partition_key,
                u,
                dup,
                unit.records,
                unit.aggregated,
                shard_id(shard),
                sequence_number(created_s, shard, counters[shard], clock // 1000),
                clock,
            )
        )
    return out
