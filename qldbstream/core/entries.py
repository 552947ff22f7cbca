"""Admission's bookkeeping: one user record's progress through a batch, and what one batch knows.

:class:`Entry` is a user record (or a parked record released into the batch) on its way through
:class:`~qldbstream.core.admit.Admission`; :class:`Caps` keeps, per shard, the checkpoint that
precedes each record parked in memory; :class:`Batch` is what one ``admit`` call knows and where it
puts each entry. See :mod:`qldbstream.core.admit` for the gate applied to a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.gate import BlockKey, BlockVerdict, Judgement
from qldbstream.core.gate_store import GateStore, ParkedRecord
from qldbstream.core.records import UserRecord
from qldbstream.core.verify import Failure

__all__ = ["Batch", "Caps", "Checkpoint", "Entry", "UnverifiableRecordError"]

#: A checkpoint: (sequence number, sub-sequence number).
Checkpoint = tuple[str, int]


class UnverifiableRecordError(PoisonRecordError):
    """A record the gate could not vouch for (rejected, or its block never decided in time)."""

    def __init__(self, message: str, check: str, position: object = None) -> None:
        super().__init__(message, position)  # type: ignore[arg-type]
        self.check = check


class Entry:
    """One user record's progress through a batch (or a parked record released into it)."""

    __slots__ = (
        "children",
        "dead",
        "foreign",
        "holds",
        "hstate",
        "k",
        "parked",
        "poison",
        "record",
        "release",
        "sees",
        "user",
    )

    def __init__(self, k: int, user: UserRecord | None, record: JournalRecord | None) -> None:
        self.k = k
        #: ``None`` for a Kinesis record that could not be deaggregated (the entry stands for it)
        self.user = user
        self.record = record
        self.dead = False
        #: set when the record is poison: (stage, error, record, verification failures); it is
        #: dead-lettered once the batch knows how far the checkpoint may go (never beyond)
        self.poison: tuple[str, BaseException, JournalRecord | None, list[Failure] | None] | None = None
        #: handler -> "done" | "skip" | "dlq" | "pending" | "held" (by the reorder policy: finished for
        #: now, its shard's checkpoint waits) | "busy" (another holder is delivering this very copy: a
        #: parked one it released - finished here, it stays parked); absent: the handler does not want it
        self.hstate: dict[str, str] = {}
        #: the record is parked (waiting for its block): finished for this batch, not delivered
        self.parked: ParkedRecord | None = None
        #: the record was parked and is now delivered from here: unpark it once finished
        self.release: ParkedRecord | None = None
        #: a parked record of another batch or shard, released into this batch by a block summary
        self.foreign = False
        #: the records this entry (a block summary) released: it is finished only when they are
        self.children: list[Entry] = []
        #: a block summary whose revisions are not all finished yet: in memory, the checkpoint stays
        #: before it (a restart must read it again, or its revisions could not be verified)
        self.holds: BlockKey | None = None
        #: a revision judged against its block's verdict: once it is settled, the pipeline reports it
        #: (``Admission.finished``) and that block summary stops holding for it
        self.sees: BlockKey | None = None

    def copy(self) -> str:
        """Which copy of a record this is: its stream position (a parked record keeps the position
        it was read at)."""
        user = self.user
        if user is None:
            return f"entry|{self.k}"
        kr = user.parent
        where = kr.source if not user.sequence_number else ""
        position = f"{user.sequence_number}|{user.sub_sequence_number}"
        return f"{kr.stream_arn or ''}|{kr.shard_id or ''}|{position}|{where}"

    def settled(self) -> bool:
        """Finished, and no handler holds it back (the reorder policy) or is being delivered by another
        holder ("busy"): it may leave the gate's store."""
        return self.finished() and not {"held", "busy"} & set(self.hstate.values())

    def finished(self) -> bool:
        if self.dead or self.parked is not None:
            return True
        if self.record is None or self.poison is not None:
            return False
        if any(s == "pending" for s in self.hstate.values()):
            return False
        return all(c.finished() for c in self.children)

    def reject(self, judgement: Judgement) -> None:
        assert self.user is not None
        failure = _failure(judgement, self.record, self.user)
        error = UnverifiableRecordError(judgement.reason, judgement.check, self.user.position)
        self.poison = ("verify", error, self.record, [failure])


def _failure(judgement: Judgement, record: JournalRecord | None, user: UserRecord) -> Failure:
    doc = record.document_id if isinstance(record, RevisionDetails) else None
    version = record.version if isinstance(record, RevisionDetails) else None
    seq = record.block_address.sequence_no if isinstance(record, RevisionDetails | BlockSummary) else None
    return Failure(judgement.check, user.position, judgement.reason, doc, version, seq)


def _position(user: UserRecord) -> tuple[int, int]:
    return (int(user.sequence_number or 0), user.sub_sequence_number)


@dataclass
class Caps:
    """In-memory parking: per shard, the checkpoint that precedes each parked record."""

    #: shard -> parked record id -> (its position, the checkpoint just before it; None: none known)
    caps: dict[str | None, dict[str, tuple[tuple[int, int], Checkpoint | None]]] = field(default_factory=dict)
    #: shard -> the checkpoint the shard's own progress allows (ignoring parked records)
    latest: dict[str | None, Checkpoint] = field(default_factory=dict)

    def add(self, shard: str | None, rid: str, position: tuple[int, int], before: Checkpoint | None) -> None:
        self.caps.setdefault(shard, {}).setdefault(rid, (position, before))

    def remove(self, shard: str | None, rid: str) -> bool:
        caps = self.caps.get(shard)
        if caps is None or caps.pop(rid, None) is None:
            return False
        if not caps:
            del self.caps[shard]
        return True

    def effective(self, shard: str | None) -> Checkpoint | None:
        """How far the shard may checkpoint: its own progress, held before its oldest parked record."""
        latest = self.latest.get(shard)
        caps = self.caps.get(shard)
        if not caps:
            return latest
        _, before = min(caps.values(), key=lambda c: c[0])
        if before is None or latest is None:
            return before if latest is None else None
        return before if _key(before) < _key(latest) else latest

    def count(self) -> int:
        return sum(len(c) for c in self.caps.values())


def _key(cp: Checkpoint) -> tuple[int, int]:
    return (int(cp[0] or 0), cp[1])


class Batch:
    """One ``admit`` call: what it knows, what it parked, where each entry goes."""

    def __init__(self, store: GateStore, entries: list[Entry]) -> None:
        self.out: list[Entry] = []
        self.placed: set[int] = set()
        self.parked_here: dict[str, Entry] = {}
        #: block -> this batch's revisions of it, in batch order
        self.revisions: dict[BlockKey, list[Entry]] = {}
        for e in entries:
            r = e.record
            if isinstance(r, RevisionDetails) and e.poison is None and not e.dead:
                ba = r.block_address
                self.revisions.setdefault((ba.strand_id, ba.sequence_no), []).append(e)
        keys = sorted(self.revisions)
        self.known: dict[BlockKey, BlockVerdict] = store.blocks(keys) if keys else {}

    def place(self, e: Entry) -> None:
        self.out.append(e)
        self.placed.add(id(e))

    def revision_hashes(self, key: BlockKey) -> set[bytes]:
        return {e.record.hash for e in self.revisions.get(key, ()) if isinstance(e.record, RevisionDetails)}

    def unplaced_revisions(self, key: BlockKey) -> list[Entry]:
        return [e for e in self.revisions.get(key, ()) if id(e) not in self.placed and e.poison is None]
