"""Stage 4: de-duplicate and order what each handler receives.

QLDB streams deliver at least once and may deliver out of order (qldb-stream-format.md §3.5).
For every handler, independently:

* **Duplicates** are recognised by key - ``rev#<documentId>#<version>`` for revisions,
  ``block#<strandId>#<sequenceNo>`` for block summaries, ``control#<type>`` for CONTROL - both
  within a batch and against the handler's *done marks* in a :class:`DedupeStore`.
* **Late revisions**: each document has a *high-water mark*, the highest version delivered to
  the handler, kept after a delete as a *tombstone* so that an older revision arriving after
  the delete cannot bring the document back. A revision at or below the mark is late; the
  :class:`LatePolicy` decides: ``deliver-late`` (the default: the handler sees ``ctx.late``),
  ``drop`` it (a handler that wants only newer versions declares it), or ``reorder``: within a
  batch revisions of one document are delivered in version order, and a revision that leaves a
  gap (version > mark + 1) is *held* for up to a window, waiting for the missing ones; when the
  window passes it is delivered anyway, and one that still comes late is delivered with
  ``ctx.late`` (never dropped).

:class:`Planner` only decides (it is pure apart from reading the store); the pipeline delivers,
and after a handler's work is flushed calls :meth:`Planner.commit` to write the marks - so a
crash between delivery and commit means a redelivery, never a loss.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from qldbstream.decode import BlockSummary, ControlRecord, JournalRecord, RevisionDetails

__all__ = [
    "DedupeStore",
    "InMemoryDedupeStore",
    "LatePolicy",
    "Plan",
    "Planner",
    "Watermark",
    "dedupe_key",
]


class LatePolicy(StrEnum):
    DROP = "drop"
    DELIVER_LATE = "deliver-late"
    REORDER = "reorder"


@dataclass(frozen=True, slots=True)
class Watermark:
    """The highest version of a document delivered to a handler, and whether it was a delete."""

    version: int
    deleted: bool = False


class DedupeStore(Protocol):
    """Where done marks and high-water marks live (in memory, or DynamoDB for several workers).

    Implementations must make :meth:`advance` conditional (never lower a mark) and may expire
    entries after their TTL.
    """

    def done(self, handler: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are marked done for ``handler``."""
        ...

    def mark_done(self, handler: str, keys: Sequence[str]) -> None: ...

    def watermarks(self, handler: str, document_ids: Sequence[str]) -> dict[str, Watermark]: ...

    def advance(self, handler: str, marks: dict[str, Watermark]) -> None:
        """Raise each document's mark to the given one where it is higher (conditional write)."""
        ...


def dedupe_key(record: JournalRecord) -> str:
    if isinstance(record, RevisionDetails):
        return f"rev#{record.document_id}#{record.version}"
    if isinstance(record, BlockSummary):
        return f"block#{record.block_address.strand_id}#{record.block_address.sequence_no}"
    if isinstance(record, ControlRecord):
        return f"control#{record.stream_arn}#{record.control_record_type}"
    raise TypeError(f"no de-duplication key for {record!r}")


@dataclass(slots=True)
class Plan:
    """What to do with one handler's share of a batch (indexes into the records given)."""

    #: indexes to deliver, in delivery order
    deliver: list[int] = field(default_factory=list)
    #: indexes delivered although late (deliver-late policy)
    late: set[int] = field(default_factory=set)
    #: index -> "duplicate" | "late"
    skipped: dict[int, str] = field(default_factory=dict)
    #: indexes held back (reorder policy, waiting for a missing version)
    held: list[int] = field(default_factory=list)


class Planner:
    """Plans deliveries for one handler and records what was done."""

    def __init__(
        self,
        handler: str,
        store: DedupeStore,
        policy: LatePolicy = LatePolicy.DROP,
        reorder_window: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.store = store
        self.policy = policy
        self.reorder_window = reorder_window
        self.clock = clock
        #: key -> monotonic time it was first held (reorder policy)
        self._held_since: dict[str, float] = {}

    def plan(self, records: Sequence[JournalRecord], allow_hold: bool = True) -> Plan:
        plan = Plan()
        keys = [dedupe_key(r) for r in records]
        done = self.store.done(self.handler, keys)
        docs = sorted({r.document_id for r in records if isinstance(r, RevisionDetails)})
        marks = dict(self.store.watermarks(self.handler, docs)) if docs else {}
        seen: set[str] = set()
        candidates: list[int] = []
        for i, key in enumerate(keys):
            if key in done or key in seen:
                plan.skipped[i] = "duplicate"
            else:
                seen.add(key)
                candidates.append(i)
        if self.policy is LatePolicy.REORDER:
            candidates = self._version_order(records, candidates)
        now = self.clock()
        for i in candidates:
            record = records[i]
            if not isinstance(record, RevisionDetails):
                plan.deliver.append(i)
                continue
            mark = marks.get(record.document_id)
            if mark is not None and record.version <= mark.version:
                if self.policy is LatePolicy.DROP:
                    plan.skipped[i] = "late"  # a handler that declared it wants only newer versions
                else:  # deliver-late; reorder too: its wait is over, it is delivered, never lost
                    plan.deliver.append(i)
                    plan.late.add(i)
                continue
            expected = 0 if mark is None else mark.version + 1
            if (
                self.policy is LatePolicy.REORDER
                and allow_hold
                and record.version > expected
                and mark is not None
            ):
                since = self._held_since.setdefault(keys[i], now)
                if now - since < self.reorder_window:
                    plan.held.append(i)
                    continue
            self._held_since.pop(keys[i], None)
            plan.deliver.append(i)
            marks[record.document_id] = Watermark(record.version, record.is_deleted)
        return plan

    @staticmethod
    def _version_order(records: Sequence[JournalRecord], candidates: list[int]) -> list[int]:
        """Stream order, except that each document's revisions come in version order."""
        by_doc: dict[str, list[int]] = {}
        for i in candidates:
            r = records[i]
            if isinstance(r, RevisionDetails):
                by_doc.setdefault(r.document_id, []).append(i)
        slots = {doc: sorted(idx, key=lambda j: records[j].version) for doc, idx in by_doc.items()}  # type: ignore[attr-defined]
        out = []
        for i in candidates:
            r = records[i]
            if isinstance(r, RevisionDetails):
                out.append(slots[r.document_id].pop(0))
            else:
                out.append(i)
        return out

    def commit(self, records: Sequence[JournalRecord]) -> None:
        """Mark ``records`` done for this handler and raise their documents' watermarks."""
        if not records:
            return
        self.store.mark_done(self.handler, [dedupe_key(r) for r in records])
        marks: dict[str, Watermark] = {}
        for r in records:
            if isinstance(r, RevisionDetails):
                current = marks.get(r.document_id)
                if current is None or r.version > current.version:
                    marks[r.document_id] = Watermark(r.version, r.is_deleted)
        if marks:
            self.store.advance(self.handler, marks)

    @property
    def holding(self) -> int:
        return len(self._held_since)


class InMemoryDedupeStore:
    """A bounded in-memory store: for Lambda-local state, a single worker, and tests.

    Done marks and watermarks are kept in LRU order and expire after ``ttl`` seconds; beyond
    ``max_entries`` per kind the least recently used are forgotten (a duplicate that old is
    then delivered again, which an idempotent sink absorbs).
    """

    def __init__(
        self, max_entries: int = 200_000, ttl: float = 7 * 24 * 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._done: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._marks: OrderedDict[tuple[str, str], tuple[Watermark, float]] = OrderedDict()

    def done(self, handler: str, keys: Sequence[str]) -> set[str]:
        now = self.clock()
        out = set()
        for key in keys:
            expires = self._done.get((handler, key))
            if expires is not None:
                if expires > now:
                    out.add(key)
                    self._done.move_to_end((handler, key))
                else:
                    del self._done[(handler, key)]
        return out

    def mark_done(self, handler: str, keys: Sequence[str]) -> None:
        expires = self.clock() + self.ttl
        for key in keys:
            self._done[(handler, key)] = expires
            self._done.move_to_end((handler, key))
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)

    def watermarks(self, handler: str, document_ids: Sequence[str]) -> dict[str, Watermark]:
        now = self.clock()
        out = {}
        for doc in document_ids:
            entry = self._marks.get((handler, doc))
            if entry is not None:
                if entry[1] > now:
                    out[doc] = entry[0]
                    self._marks.move_to_end((handler, doc))
                else:
                    del self._marks[(handler, doc)]
        return out

    def advance(self, handler: str, marks: dict[str, Watermark]) -> None:
        expires = self.clock() + self.ttl
        for doc, mark in marks.items():
            current = self._marks.get((handler, doc))
            if current is None or current[1] <= self.clock() or mark.version > current[0].version:
                self._marks[(handler, doc)] = (mark, expires)
            self._marks.move_to_end((handler, doc))
        while len(self._marks) > self.max_entries:
            self._marks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._done) + len(self._marks)
