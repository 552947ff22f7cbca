"""Messy deliveries for handler-level tests: a simulated stream split over shards, read in hostile
orders, with duplicates, and with the late flags the pipeline sets under its default late policy.

The pipeline itself is not used: this module plays its part for one handler, as
``qldbstream.api.handler`` documents it, so that the handlers are tested on exactly what they are
promised - every verified revision, at least once, in shard order, a revision at or below the
highest version already delivered for its document flagged late (``ctx.late_indexes``) - and
nothing else. Expected results are always computed from the simulator's ledger by the tests, never
from this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import ControlRecord, JournalRecord, RevisionDetails, decode
from qldbstream.core.dedupe import dedupe_key
from tests.support.streams import kinesis_records

Batch = tuple[str, list[JournalRecord]]


def shard_records(sim: Simulation) -> dict[str, list[JournalRecord]]:
    """Each shard's journal records (de-aggregated, decoded), duplicates included, in shard order."""
    return {
        shard: [decode(user) for kr in records for user in deaggregate(kr)]
        for shard, records in sorted(kinesis_records(sim).items())
    }


def _chunks(records: list[JournalRecord], size: int) -> list[list[JournalRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def round_robin(per_shard: dict[str, list[JournalRecord]], size: int) -> list[Batch]:
    """Every shard's batches in turn: shards read together."""
    queues = {shard: _chunks(records, size) for shard, records in per_shard.items()}
    out: list[Batch] = []
    while any(queues.values()):
        for shard, queue in queues.items():
            if queue:
                out.append((shard, queue.pop(0)))
    return out


def shard_by_shard(
    per_shard: dict[str, list[JournalRecord]],
    size: int,
    *,
    reverse: bool = False,
    order: Sequence[str] | None = None,
) -> list[Batch]:
    """One whole shard after the other (sorted, reversed, or in ``order``): shards read as far
    apart as they can be."""
    shards = list(order) if order is not None else sorted(per_shard, reverse=reverse)
    return [(shard, chunk) for shard in shards for chunk in _chunks(per_shard[shard], size)]


def completed_shard(per_shard: dict[str, list[JournalRecord]]) -> str:
    """The shard that carries CONTROL ``COMPLETED`` (QLDB writes it to one shard only)."""
    (shard,) = {
        s
        for s, records in per_shard.items()
        for r in records
        if isinstance(r, ControlRecord) and r.control_record_type == "COMPLETED"
    }
    return shard


@dataclass
class Delivery:
    """The pipeline's promise to one handler: de-duplicated by key, late revisions flagged.

    ``plan`` gives the records of a batch the handler receives and the indexes of the late ones;
    ``commit`` (after a successful flush) records them as delivered. One ``Delivery`` shared by
    several handler instances plays a shared de-duplication store (Lambda, several KCL workers).
    """

    done: set[str] = field(default_factory=set)
    #: document -> highest version delivered and flushed
    marks: dict[str, int] = field(default_factory=dict)

    def plan(
        self, handler: Handler, records: Sequence[JournalRecord]
    ) -> tuple[list[JournalRecord], frozenset[int]]:
        out: list[JournalRecord] = []
        late: set[int] = set()
        seen: set[str] = set()
        marks = dict(self.marks)
        for record in records:
            if not handler.wants(record):
                continue
            key = dedupe_key(record)
            if key in self.done or key in seen:
                continue
            seen.add(key)
            if isinstance(record, RevisionDetails):
                mark = marks.get(record.document_id)
                if mark is not None and record.version <= mark:
                    late.add(len(out))
                else:
                    marks[record.document_id] = record.version
            out.append(record)
        return out, frozenset(late)

    def commit(self, records: Sequence[JournalRecord]) -> None:
        for record in records:
            self.done.add(dedupe_key(record))
            if isinstance(record, RevisionDetails):
                mark = self.marks.get(record.document_id, -1)
                self.marks[record.document_id] = max(mark, record.version)


def deliver(
    handler: Handler,
    work: Sequence[Batch],
    *,
    delivery: Delivery | None = None,
    metrics: InMemoryMetrics | None = None,
) -> InMemoryMetrics:
    """Hand ``work`` to ``handler`` batch by batch (``handle_batch``, then ``flush``, then commit)."""
    delivery = delivery if delivery is not None else Delivery()
    metrics = metrics if metrics is not None else InMemoryMetrics()
    for shard, records in work:
        wanted, late = delivery.plan(handler, records)
        ctx = HandlerContext(handler.name, shard, metrics=metrics, late_indexes=late)
        if wanted:
            handler.handle_batch(wanted, ctx)
        handler.flush(ctx)
        delivery.commit(wanted)
    return metrics


def skipped_after_flush(
    batches: Sequence[Sequence[JournalRecord]], wants: Callable[[JournalRecord], bool]
) -> set[tuple[str, int]]:
    """Revisions that arrive when a newer version of their document was already delivered *and
    flushed* (in an earlier batch): what a handler that writes each document's versions in order
    to an append-only target must skip. Duplicates are not counted."""
    flushed: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    skipped: set[tuple[str, int]] = set()
    for records in batches:
        batch_high: dict[str, int] = {}
        for r in records:
            if not isinstance(r, RevisionDetails) or not wants(r) or (r.document_id, r.version) in seen:
                continue
            seen.add((r.document_id, r.version))
            if r.version < flushed.get(r.document_id, -1):
                skipped.add((r.document_id, r.version))
            else:
                batch_high[r.document_id] = max(batch_high.get(r.document_id, -1), r.version)
        for doc, version in batch_high.items():
            flushed[doc] = max(flushed.get(doc, -1), version)
    return skipped


def interleave(*streams: Sequence[Batch]) -> Iterator[tuple[int, Batch]]:
    """Batches of several workers taking turns: ``(worker index, batch)``."""
    queues = [list(s) for s in streams]
    while any(queues):
        for i, queue in enumerate(queues):
            if queue:
                yield i, queue.pop(0)
