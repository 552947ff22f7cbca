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

**Several processes** (Lambda containers, KCL record processors) share one store, and two of them
can hold copies of one revision, or two versions of one document, at the same moment. Reading the
marks first and writing them after delivery cannot tell them apart, so a *shared* store
(``store.shared``) is asked to :meth:`~SharedDedupeStore.claim` every record just before it is
delivered: an atomic, conditional claim of its key by its *owner* - the copy's stream position, so
a redelivery of the same copy (after a crash or a retried batch) claims it again, while another
copy finds it claimed and is a duplicate (the owner's shard does not move past it until it is
delivered or dead-lettered). A revision's claim also raises its document's mark to its version
when the mark is lower: a revision whose claim finds a mark at or above it is late. So across
processes each record reaches a handler once per copy position at most, and an older version that
reaches a handler after a newer one was *claimed* carries ``ctx.late`` - the order is the order of
the claims in the store. A claim also names its *holder* - the shard being processed (or the
worker's journal-order reader) - and holds for a lease (:data:`RELEASE_LEASE`): a parked record can
be released by any shard that verifies its block, and another holder releasing the same copy
meanwhile is told it is busy and leaves it parked. And while a claimed revision is being delivered
its document is *locked* by its holder (until it
is finished, or :data:`DOCUMENT_LOCK` passes): a newer version claimed meanwhile from another shard
*waits* (its shard halts there and tries again), so a handler never receives a document's versions
from two shards at once, and an older version that arrives after a newer one is flagged late.

:class:`Planner` only decides (it is pure apart from reading the store); the pipeline delivers,
and after a handler's work is flushed calls :meth:`Planner.commit` to write the marks - so a
crash between delivery and commit means a redelivery, never a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from qldbstream.core.decode import BlockSummary, ControlRecord, JournalRecord, RevisionDetails

__all__ = [
    "Claim",
    "ClaimResult",
    "DedupeStore",
    "LatePolicy",
    "Plan",
    "Planner",
    "SharedDedupeStore",
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
    """Where done marks and high-water marks live (in memory,
    :class:`qldbstream.pipeline.stores.InMemoryDedupeStore`, or DynamoDB for several workers).

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


class ClaimResult(StrEnum):
    #: claimed, and no newer version of its document was claimed before it
    ORDERED = "ordered"
    #: claimed, but a newer version of its document was claimed first
    LATE = "late"
    #: another copy (another stream position) claimed it: that copy delivers it
    DUPLICATE = "duplicate"
    #: this very copy is being delivered by another holder (a parked copy that another shard released:
    #: its lease is live): leave it parked - if that holder dies, the lease ends and it is released again
    BUSY = "busy"

    #: an earlier version of its document is being delivered by another copy (the document is
    #: locked): not delivered now - the shard halts here and tries again
    WAIT = "wait"


#: how long a claim's holder holds the copy (seconds): long enough to deliver a batch; if it dies,
#: another holder may take the copy after this (the same holder - its shard's next processor - at once)
RELEASE_LEASE = 300.0
#: how long a claimed revision locks its document, at most (seconds): until it is delivered, skipped
#: or dead-lettered (:meth:`Planner.unlock`), or its holder died and this time passed
DOCUMENT_LOCK = 900.0


@dataclass(frozen=True, slots=True)
class Claim:
    """A record about to be delivered to a handler: its key, the copy claiming it and, for a
    revision, its document and version."""

    key: str
    owner: str
    document_id: str | None = None
    version: int = -1
    deleted: bool = False
    #: who delivers the copy (the shard being processed, or the journal-order reader): it holds the
    #: claim for ``lease`` seconds, against other holders of the same copy (a parked copy released
    #: by two shards' block summaries)
    holder: str = ""
    lease: float = 0.0
    #: who locks the document while the revision is delivered (the holder)
    locker: str = ""


class SharedDedupeStore(DedupeStore, Protocol):
    """A store several processes use at once (``shared = True``): it also takes claims."""

    shared: bool

    def claim(self, handler: str, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Claim each record for ``handler``, atomically per record (see the module docstring)."""
        ...

    def unlock(self, handler: str, locks: Mapping[str, str]) -> None:
        """Let go of documents (documentId -> locker) whose claimed revisions are finished."""
        ...

    def unclaim(self, handler: str, claims: Sequence[tuple[str, str]]) -> None:
        """Remove the claims (key, owner) that this owner still holds."""
        ...


def dedupe_key(record: JournalRecord) -> str:
    """A record's identity, the key de-duplication marks done: ``rev#<documentId>#<version>``,
    ``block#<strandId>#<sequenceNo>`` or ``control#<streamArn>#<type>``."""
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
    #: indexes another holder is delivering (parked copies it released and holds a lease on)
    busy: list[int] = field(default_factory=list)
    #: indexes not delivered now, in delivery order: the first waits for another copy delivering an
    #: earlier version of its document, the rest come after it (the shard halts there)
    waiting: list[int] = field(default_factory=list)
    #: documentId -> the copy whose claim locked it (to unlock once finished)
    locks: dict[str, str] = field(default_factory=dict)


class Planner:
    """Plans deliveries for one handler and records what was done.

    ``clock`` (seconds, e.g. the pipeline's monotonic clock) times the reorder policy's holds:
    the core never reads the time itself."""

    def __init__(
        self,
        handler: str,
        store: DedupeStore,
        policy: LatePolicy = LatePolicy.DROP,
        reorder_window: float = 30.0,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.handler = handler
        self.store = store
        self.policy = policy
        self.reorder_window = reorder_window
        self.clock = clock
        #: key -> ``clock()`` when it was first held (reorder policy)
        self._held_since: dict[str, float] = {}
        #: a store shared by several processes decides at claim time, just before delivery
        self.claims = bool(getattr(store, "shared", False))

    def plan(
        self,
        records: Sequence[JournalRecord],
        allow_hold: bool = True,
        owners: Sequence[tuple[str, str]] | None = None,
        locker: str = "",
    ) -> Plan:
        """Plan one handler's share of a batch. ``owners``: each record's copy identity (its stream
        position) and its holder; required to claim records in a shared store - without it no
        claim is made.
        ``locker``: who locks a document while its revision is delivered - the shard being
        processed (one processor at a time; its next processor, after a crash, takes it again)."""
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
        if self.claims and owners is not None and plan.deliver:
            self._claim(records, keys, owners, locker, plan)
        return plan

    def _claim(
        self,
        records: Sequence[JournalRecord],
        keys: list[str],
        owners: Sequence[tuple[str, str]],
        locker: str,
        plan: Plan,
    ) -> None:
        """Let the shared store decide, atomically, what the marks read before could not."""
        claims = []
        for i in plan.deliver:
            r = records[i]
            owner, holder = owners[i]
            lease = RELEASE_LEASE
            if isinstance(r, RevisionDetails):
                claims.append(
                    Claim(keys[i], owner, r.document_id, r.version, r.is_deleted, holder, lease, locker)
                )
            else:
                claims.append(Claim(keys[i], owner, holder=holder, lease=lease))
        results = self.store.claim(self.handler, claims)  # type: ignore[attr-defined]
        deliver = []
        for i, result in zip(plan.deliver, results, strict=True):
            r = records[i]
            if result is ClaimResult.ORDERED and isinstance(r, RevisionDetails):
                plan.locks[r.document_id] = locker
            if plan.waiting or result is ClaimResult.WAIT:
                plan.waiting.append(i)
                plan.late.discard(i)
            elif result is ClaimResult.BUSY:
                plan.busy.append(i)
                plan.late.discard(i)
            elif result is ClaimResult.DUPLICATE:
                plan.skipped[i] = "duplicate"
                plan.late.discard(i)
            elif result is ClaimResult.LATE and self.policy is LatePolicy.DROP:
                plan.skipped[i] = "late"
                plan.late.discard(i)
            else:
                if result is ClaimResult.LATE:
                    plan.late.add(i)
                else:
                    plan.late.discard(i)
                deliver.append(i)
        plan.deliver = deliver
        if plan.waiting:  # a document locked only for what is not delivered now is let go
            kept = {r.document_id for i in deliver if isinstance(r := records[i], RevisionDetails)}
            free = {doc: who for doc, who in plan.locks.items() if doc not in kept}
            for doc in free:
                del plan.locks[doc]
            if free:
                self.store.unlock(self.handler, free)  # type: ignore[attr-defined]

    def unclaim(self, records: Sequence[JournalRecord], owners: Sequence[str]) -> None:
        """Give up the claims of records that are dead-lettered for this handler (a replay of the
        dead letter claims them again)."""
        if self.claims and records:
            keys = [(dedupe_key(r), owner) for r, owner in zip(records, owners, strict=True)]
            self.store.unclaim(self.handler, keys)  # type: ignore[attr-defined]

    def unlock(self, locks: dict[str, str]) -> None:
        """Let go of documents a plan locked (its revisions are finished: delivered, skipped or
        dead-lettered)."""
        if locks and self.claims:
            self.store.unlock(self.handler, locks)  # type: ignore[attr-defined]

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
