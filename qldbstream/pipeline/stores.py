"""The in-memory versions of the core's store ports: the de-duplication store and the gate store.

The ports themselves are Protocols in the core (:class:`~qldbstream.core.dedupe.DedupeStore`,
:class:`~qldbstream.core.dedupe.SharedDedupeStore`, :class:`~qldbstream.core.gate_store.GateStore`):
the core's planners are typed against them and the core never imports the pipeline. Their
DynamoDB versions live in :mod:`qldbstream.io.dedupe_dynamodb` and :mod:`qldbstream.io.gate_dynamodb`;
the checkpoint store's port and in-memory version are in :mod:`qldbstream.pipeline.checkpoint`.
These hold state for one process: the standalone worker, one-off runs, Lambda-local state, tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from qldbstream.core.dedupe import DOCUMENT_LOCK, Claim, ClaimResult, Watermark
from qldbstream.core.gate import BlockKey, BlockVerdict, Link
from qldbstream.core.gate_store import ParkedRecord

__all__ = ["InMemoryDedupeStore", "InMemoryGateStore"]


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
        #: (handler, key) -> (owner, expires, holder, lease ends); (handler, documentId) -> owner of its mark
        self._claims: OrderedDict[tuple[str, str], tuple[str, float, str, float]] = OrderedDict()
        self._mark_owner: dict[tuple[str, str], str] = {}
        #: (handler, documentId) -> (locker, until): a revision of it is being delivered
        self._locks: dict[tuple[str, str], tuple[str, float]] = {}

    #: one process: the planner's read-then-write is enough; :meth:`claim` exists so that the
    #: store contract tests hold this store and the shared ones to the same rules
    shared = False

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
                self._mark_owner.pop((handler, doc), None)
            self._marks.move_to_end((handler, doc))
        while len(self._marks) > self.max_entries:
            handler_doc, _ = self._marks.popitem(last=False)
            self._mark_owner.pop(handler_doc, None)

    def claim(self, handler: str, claims: Sequence[Claim]) -> list[ClaimResult]:
        now = self.clock()
        expires = now + self.ttl
        out = []
        for c in claims:
            held = self._claims.get((handler, c.key))
            if held is not None and held[1] > now:
                if held[0] != c.owner:
                    out.append(ClaimResult.DUPLICATE)
                    continue
                if held[2] and held[2] != c.holder and held[3] > now:
                    out.append(ClaimResult.BUSY)
                    continue
            self._claims[(handler, c.key)] = (c.owner, expires, c.holder, now + c.lease if c.holder else 0.0)
            self._claims.move_to_end((handler, c.key))
            if c.document_id is None:
                out.append(ClaimResult.ORDERED)
                continue
            doc = (handler, c.document_id)
            current = self._marks.get(doc)
            newer = (
                current is None
                or current[1] <= now
                or current[0].version < c.version
                or (current[0].version == c.version and self._mark_owner.get(doc) == c.owner)
            )
            lock = self._locks.get(doc)
            if not newer:
                out.append(ClaimResult.LATE)
            elif lock is not None and lock[0] != c.locker and lock[1] > now:
                out.append(ClaimResult.WAIT)
            else:
                self._marks[doc] = (Watermark(c.version, c.deleted), expires)
                self._marks.move_to_end(doc)
                self._mark_owner[doc] = c.owner
                self._locks[doc] = (c.locker, now + DOCUMENT_LOCK)
                out.append(ClaimResult.ORDERED)
        while len(self._claims) > self.max_entries:
            self._claims.popitem(last=False)
        while len(self._marks) > self.max_entries:
            handler_doc, _ = self._marks.popitem(last=False)
            self._mark_owner.pop(handler_doc, None)
        return out

    def unclaim(self, handler: str, claims: Sequence[tuple[str, str]]) -> None:
        for key, owner in claims:
            held = self._claims.get((handler, key))
            if held is not None and held[0] == owner:
                del self._claims[(handler, key)]

    def unlock(self, handler: str, locks: Mapping[str, str]) -> None:
        for doc, locker in locks.items():
            lock = self._locks.get((handler, doc))
            if lock is not None and lock[0] == locker:
                del self._locks[(handler, doc)]

    def __len__(self) -> int:
        return len(self._done) + len(self._marks)


@dataclass
class InMemoryGateStore:
    """The gate's state in this process (the standalone worker, one-off runs, tests).

    Verdicts are bounded (least recently used forgotten beyond ``max_blocks``: a revision of a
    forgotten block waits again, and is dead-lettered as unverifiable if its block never comes
    back). Parked records are not bounded here: the pipeline bounds them (``max_parked``).
    """

    max_blocks: int = 200_000
    _blocks: OrderedDict[BlockKey, BlockVerdict] = field(default_factory=OrderedDict)
    _parked: dict[BlockKey, dict[str, ParkedRecord]] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        return False

    def blocks(self, keys: Sequence[BlockKey]) -> dict[BlockKey, BlockVerdict]:
        out = {}
        for key in keys:
            verdict = self._blocks.get(key)
            if verdict is not None:
                out[key] = verdict
                self._blocks.move_to_end(key)
        return out

    def put_block(self, verdict: BlockVerdict) -> BlockVerdict:
        stored = self._blocks.get(verdict.key)
        if stored is not None:
            return stored
        self._blocks[verdict.key] = verdict
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        return verdict

    def set_link(self, key: BlockKey, link: Link) -> None:
        verdict = self._blocks.get(key)
        if verdict is not None and verdict.link is not Link.BROKEN:
            verdict.link = link

    def park(self, records: Sequence[ParkedRecord]) -> None:
        for record in records:
            self._parked.setdefault(record.key, {}).setdefault(record.id, record)

    def parked(self, key: BlockKey) -> list[ParkedRecord]:
        return list(self._parked.get(key, {}).values())

    def unpark(self, key: BlockKey, ids: Sequence[str]) -> None:
        waiting = self._parked.get(key)
        if waiting is None:
            return
        for i in ids:
            waiting.pop(i, None)
        if not waiting:
            del self._parked[key]

    def expired(self, parked_before: float, limit: int) -> list[ParkedRecord]:
        old = [
            r for waiting in self._parked.values() for r in waiting.values() if r.parked_at < parked_before
        ]
        old.sort(key=lambda r: r.parked_at)
        return old[:limit]

    def parked_count(self) -> int:
        return sum(len(w) for w in self._parked.values())
