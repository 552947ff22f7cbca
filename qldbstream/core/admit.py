"""Stage 3b: admission - the delivery gate applied to one batch (see :mod:`qldbstream.core.gate`).

After decode and verify, each user record of the batch is *admitted* (every check that covers
it passed: it may be delivered), *parked* (its block's verdict, or under ``chain-confirmed`` the
link that confirms its block, is not known yet) or *rejected* (it becomes poison and is
dead-lettered with the reason). A block summary's verdict releases the records parked for its
block - from this batch, from earlier batches, from other shards or other processes: they are
decoded and verified again from their parked bytes and delivered right after the block summary
that released them, which is not finished until they are.

Parked records and the checkpoint: with a durable store a parked record is finished (the store
holds its bytes). With an in-memory store the shard's checkpoint stays before the oldest record
it has parked (:class:`Caps`); it moves on when the record is delivered or dead-lettered, possibly
while another shard's batch is running (``BatchResult.other_checkpoints``).

A record parked for longer than ``max_wait`` seconds (its block summary never came, or no
successor confirmed its block) is dead-lettered as unverifiable: never delivered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails, decode
from qldbstream.core.errors import DecodeError, PoisonRecordError
from qldbstream.core.gate import (
    OWN_BLOCK_CHECKS,
    WAIT,
    BlockKey,
    BlockVerdict,
    Delivery,
    GateStore,
    Judgement,
    Link,
    ParkedRecord,
    Verdict,
    judge_block,
    judge_revision,
)
from qldbstream.core.order import JournalOrder
from qldbstream.core.records import UserRecord
from qldbstream.core.scan import block_documents
from qldbstream.core.verify import Failure, Verifier

__all__ = ["Admission", "Caps", "Entry", "UnverifiableRecordError"]

log = logging.getLogger("qldbstream.admit")

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
        #: a block summary whose revisions are not all seen yet: in memory, the checkpoint stays
        #: before it (a restart must read it again, or its revisions could not be verified)
        self.holds: BlockKey | None = None

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


#: what a chain-confirmed block summary also waits to see: the block before it
_PREVIOUS = b"previous block"


class _Batch:
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


class Admission:
    """Runs the gate over a batch's entries; owns nothing but the store and the verdict cache."""

    def __init__(
        self,
        store: GateStore,
        verifier: Verifier,
        *,
        delivery: Delivery = Delivery.VERIFIED,
        max_wait: float = 600.0,
        wall_clock: Callable[[], float],
        masker: object = None,
        order: JournalOrder | None = None,
        anchors: Mapping[BlockKey, bytes] | None = None,
    ) -> None:
        self.store = store
        #: chain-confirmed: blocks a ledger digest confirms (:mod:`qldbstream.io.anchors`)
        self.anchors = dict(anchors or {})
        #: journal order across shards (one process only): see :mod:`qldbstream.core.order`
        self.order = order
        #: arrival time of each block waiting for its predecessor (journal order)
        self._arrivals: dict[BlockKey, float | None] = {}
        #: in memory: blocks whose listed revisions (or, chain-confirmed, whose predecessor) were
        #: not all seen yet, and since when - their summaries hold their shards' checkpoints
        self._unseen: dict[BlockKey, tuple[set[bytes], float]] = {}
        #: blocks no longer held for (bounded): a duplicate of their summary holds nothing
        self._settled: OrderedDict[BlockKey, None] = OrderedDict()
        #: block -> the (shard, cap id) of each block summary entry holding a checkpoint for it
        self._hold_caps: dict[BlockKey, list[tuple[str | None, str]]] = {}
        #: shards whose caps were lifted since the pipeline last looked
        self.lifted: set[str | None] = set()
        self.verifier = verifier
        self.delivery = delivery
        self.max_wait = max_wait
        self.wall_clock = wall_clock
        self.masker = masker
        self.caps = Caps()
        self._shard: str | None = None
        self._revived: set[str] = set()

    # -- one batch ------------------------------------------------------------------------------
    def admit(self, entries: list[Entry], limit: int, shard_id: str | None = None) -> list[Entry]:
        """Judge ``entries[:limit]`` in order; returns the entries to deliver, released ones included
        (each right after the block summary, or the record, that released it)."""
        batch = _Batch(self.store, entries[:limit])
        self._shard = shard_id
        self._revived = set()  # parked records released in this call (each once)
        for e in entries[:limit]:
            if id(e) in batch.placed:
                continue  # a revision already placed right after its block (journal order)
            batch.place(e)
            record = e.record
            if e.poison is not None and e.poison[0] == "verify" and isinstance(e.poison[2], BlockSummary):
                record = e.poison[2]  # its own checks failed: its verdict still rejects its revisions
            elif e.poison is not None or e.dead or record is None:
                continue
            if isinstance(record, RevisionDetails):
                children = self._revision(e, record, batch)
            elif isinstance(record, BlockSummary):
                children = self._block(e, record, batch)
            else:
                continue  # CONTROL: nothing to verify
            for child in children:
                if child.foreign:
                    child.k = e.k
                    e.children.append(child)
                batch.place(child)
        return batch.out + entries[limit:]

    def _judge(
        self, record: JournalRecord, key: BlockKey, verdict: BlockVerdict | None, *, ordered: bool = True
    ) -> Judgement:
        """The gate's judgement of ``record`` given its block's verdict; with journal order, an
        admitted record also waits for its block's turn (a revision: until its block was released)."""
        if verdict is None:
            return WAIT
        judgement = (
            judge_revision(record, verdict, self.delivery)
            if isinstance(record, RevisionDetails)
            else judge_block(verdict, self.delivery)
        )
        order = self.order if ordered else None
        if order is not None and judgement.verdict is Verdict.ADMIT:
            turn = order.next.get(key[0])
            if turn is None or key[1] > turn or (key[1] == turn and isinstance(record, RevisionDetails)):
                return WAIT
        return judgement

    def _revision(self, e: Entry, r: RevisionDetails, batch: _Batch) -> list[Entry]:
        ba = r.block_address
        key = (ba.strand_id, ba.sequence_no)
        verdict = batch.known.get(key)
        judgement = self._judge(r, key, verdict)
        if judgement.verdict is Verdict.REJECT:
            e.reject(judgement)
        if judgement.verdict is not Verdict.WAIT:
            self._seen(key, r.hash)
            return []
        self._park(e, key, "revision", batch)
        # journal order: the block may have waited only for this revision
        ready = self.order is not None and verdict is not None and e.parked is not None
        if ready and self._may_release(key, verdict, batch):  # type: ignore[arg-type]
            return self._release(key, verdict, batch)  # type: ignore[arg-type]
        return []

    def _may_release(self, key: BlockKey, verdict: BlockVerdict, batch: _Batch) -> bool:
        """Journal order: the block's turn has come and every revision it lists is at hand."""
        assert self.order is not None
        if (
            self.order.next.get(key[0]) != key[1]
            or judge_block(verdict, self.delivery).verdict is Verdict.WAIT
        ):
            return False
        if not verdict.ok:
            return True
        have = batch.revision_hashes(key)
        for p in self.store.parked(key):
            if p.kind == "revision" and p.decoded is not None:
                have.add(p.decoded[1].hash)  # type: ignore[attr-defined]
        return set(verdict.entries) <= have

    def _park(self, e: Entry, key: BlockKey, kind: str, batch: _Batch) -> None:
        assert e.user is not None
        parked = ParkedRecord.of(key, e.user, kind, self.wall_clock(), self._shard)
        if not self.store.durable and e.record is not None:
            parked.decoded = (e.user, e.record)
        try:
            self.store.park([parked])
        except ValueError as exc:  # too large for the store (ParkedRecordTooLarge): dead-letter it
            e.reject(Judgement(Verdict.REJECT, "V3", f"cannot wait for its block: {exc}"))
            return
        e.parked = parked
        batch.parked_here[parked.id] = e
        if self.store.durable and kind == "revision":
            # another process may have stored the verdict between our read and the park: read it
            # again; whoever sees both sides delivers (de-duplication absorbs a double delivery)
            verdict = self.store.blocks([key]).get(key)
            if verdict is not None:
                batch.known[key] = verdict
                self._settle_parked(e, verdict)

    def _settle_parked(self, e: Entry, verdict: BlockVerdict) -> None:
        """A parked entry whose block is now decided: admit it in place, or reject it."""
        assert e.record is not None and e.parked is not None
        judgement = self._judge(e.record, e.parked.key, verdict)
        if judgement.verdict is Verdict.WAIT:
            return
        e.release, e.parked = e.parked, None
        if judgement.verdict is Verdict.REJECT:
            e.reject(judgement)

    def _block(self, e: Entry, b: BlockSummary, batch: _Batch) -> list[Entry]:
        failures = e.poison[3] if e.poison is not None else None
        own = [f.check for f in failures or () if f.check in OWN_BLOCK_CHECKS]
        try:
            tables = block_documents(b) if b.transaction_info_hash is not None else None
        except DecodeError as exc:
            e.poison = ("decode", exc.with_position(b.position), b, None)
            return []
        verdict = BlockVerdict.of(b, own, tables)
        stored = self.store.put_block(verdict)
        key = verdict.key
        if stored.block_hash != verdict.block_hash:
            e.reject(
                Judgement(
                    Verdict.REJECT,
                    "V9",
                    f"a different block (blockHash {stored.block_hash.hex()[:16]}...) was seen at "
                    f"{key[0]}/{key[1]} first: two blocks claim one place in the chain",
                )
            )
            return []
        batch.known[key] = stored
        if not self.store.durable:
            self._track_unseen(e, key, stored, batch)
        released_keys = [key]
        if self.delivery is Delivery.CHAIN_CONFIRMED:
            released_keys = self._links(stored, batch.known) + released_keys
        judgement = self._judge(b, key, stored)
        if self.order is not None:
            self._arrivals.setdefault(
                key, b.user_record.parent.approximate_arrival_timestamp if b.user_record else None
            )
            if judgement.verdict is Verdict.ADMIT and not self._may_release(key, stored, batch):
                judgement = WAIT
        if judgement.verdict is Verdict.WAIT:
            self._park(e, key, "block", batch)
        elif judgement.verdict is Verdict.REJECT and e.poison is None:
            e.reject(judgement)
        released: list[Entry] = []
        for k in released_keys:
            released += self._release(k, batch.known[k], batch)
        return released

    def _track_unseen(self, e: Entry, key: BlockKey, verdict: BlockVerdict, batch: _Batch) -> None:
        """In memory: a block summary holds its shard's checkpoint until every revision it lists was
        seen (and, chain-confirmed, its predecessor): after a restart the gate's verdicts are gone, and
        a revision read after it could not be verified if the checkpoint had passed its summary."""
        if key in self._settled:
            return  # a duplicate of a block summary already settled
        if key not in self._unseen:
            # every revision it lists must be delivered or rejected first (a parked one is lost with
            # this process; read again, it needs this block summary read again too)
            unseen = set(verdict.entries)
            if self.delivery is Delivery.CHAIN_CONFIRMED and (key[0], key[1] - 1) not in self._settled:
                unseen.add(_PREVIOUS)  # and the block before it: its confirmation is this block
            if not unseen:
                return
            self._unseen[key] = (unseen, self.wall_clock())
        e.holds = key

    def _seen(self, key: BlockKey, what: bytes) -> None:
        entry = self._unseen.get(key)
        if entry is None:
            return
        entry[0].discard(what)
        if not entry[0]:
            self._let_go(key)

    def _let_go(self, key: BlockKey) -> None:
        self._unseen.pop(key, None)
        self._settled[key] = None
        if len(self._settled) > 200_000:
            self._settled.popitem(last=False)
        if self.delivery is Delivery.CHAIN_CONFIRMED:
            self._seen((key[0], key[1] + 1), _PREVIOUS)
        for shard, cap in self._hold_caps.pop(key, []):
            if self.caps.remove(shard, cap):
                self.lifted.add(shard)

    def holding(self, key: BlockKey) -> bool:
        """Whether a block summary still holds its shard's checkpoint (see :meth:`_track_unseen`)."""
        return key in self._unseen

    def hold(self, key: BlockKey, shard: str | None, cap: str) -> None:
        self._hold_caps.setdefault(key, []).append((shard, cap))

    def let_go_of_old_holds(self, *, everything: bool = False) -> None:
        """Blocks that waited ``max_wait`` for their revisions (or the end of the input): their
        summaries stop holding the checkpoint."""
        before = float("inf") if everything else self.wall_clock() - self.max_wait
        for key in [k for k, (_, since) in self._unseen.items() if since < before]:
            self._let_go(key)

    def _links(self, verdict: BlockVerdict, known: dict[BlockKey, BlockVerdict]) -> list[BlockKey]:
        """chain-confirmed: judge the links to the previous and the next block; return what changed."""
        strand, seq = verdict.key
        anchored = self.anchors.get(verdict.key)
        if anchored is not None and verdict.link is not Link.BROKEN:
            # a digest's proof speaks for the block itself: its successor's link cannot overrule it
            link = Link.CONFIRMED if anchored == verdict.block_hash else Link.BROKEN
            if verdict.link is not link:
                self.store.set_link(verdict.key, link)
                verdict.link = link
        neighbours = self.store.blocks([(strand, seq - 1), (strand, seq + 1)])
        changed = []
        previous = neighbours.get((strand, seq - 1))
        if previous is not None:
            link = Link.CONFIRMED if previous.block_hash == verdict.previous_hash else Link.BROKEN
            if previous.link is not Link.BROKEN and previous.link is not link:
                self.store.set_link(previous.key, link)
                previous.link = link
            known[previous.key] = previous
            changed.append(previous.key)
        following = neighbours.get((strand, seq + 1))
        if following is not None and anchored is None:
            link = Link.CONFIRMED if following.previous_hash == verdict.block_hash else Link.BROKEN
            if verdict.link is not Link.BROKEN and verdict.link is not link:
                self.store.set_link(verdict.key, link)
                verdict.link = link
        return changed

    def _release(
        self, key: BlockKey, verdict: BlockVerdict, batch: _Batch, *, force: bool = False
    ) -> list[Entry]:
        """The records parked for ``key``, now that the block is decided - and, with journal order,
        the blocks that were waiting for it (each block's summary first, then its revisions).

        ``force``: journal order gave up waiting for the block's predecessor or missing revisions."""
        out: list[Entry] = []
        order = self.order
        todo = [(key, verdict)]
        while todo:
            k, v = todo.pop(0)
            if judge_block(v, self.delivery).verdict is Verdict.WAIT:
                continue  # chain-confirmed: the block is still waiting for its successor's link
            if order is not None:
                turn = order.next.get(k[0])
                early = turn is None or k[1] > turn
                if early or (k[1] == turn and not force and not self._may_release(k, v, batch)):
                    # not its turn yet (or its revisions are not all here): it takes its turn later;
                    # a rejected block's parked records are rejected at once all the same
                    order.wait(k[0], k[1], self._arrivals.get(k))
                    if not v.ok:
                        out += self._revive_parked(k, v, batch)
                    continue
                force = False
                assert turn is not None
                if k[1] >= turn:
                    order.released(k[0], k[1])
                self._arrivals.pop(k, None)
            out += self._revive_parked(k, v, batch)
            if order is not None:
                # the block's revisions later in this batch go right after it, before the next block
                for later in batch.unplaced_revisions(k):
                    out.append(later)
                    batch.placed.add(id(later))
                    self._seen(k, later.record.hash)  # type: ignore[union-attr]
                    judgement = self._judge(later.record, k, v)  # type: ignore[arg-type]
                    if judgement.verdict is Verdict.REJECT:
                        later.reject(judgement)
                nxt = (k[0], k[1] + 1)
                if nxt[1] in order.waiting.get(k[0], {}):
                    found = self.store.blocks([nxt]).get(nxt)
                    if found is not None:
                        todo.append((nxt, found))
        return out

    def _revive_parked(self, key: BlockKey, verdict: BlockVerdict, batch: _Batch) -> list[Entry]:
        records = self.store.parked(key)
        records.sort(key=lambda p: p.kind != "block")  # the block summary before its revisions
        out = []
        for parked in records:
            if parked.id in self._revived:
                continue  # released once already in this call (a duplicate block summary, a link)
            here = batch.parked_here.pop(parked.id, None)
            if here is not None and here.record is not None:
                # parked earlier in this batch: the same entry moves here, after what released it
                judgement = self._judge(here.record, key, verdict, ordered=False)
                if judgement.verdict is Verdict.WAIT:
                    batch.parked_here[parked.id] = here
                    continue
                here.release, here.parked = here.parked, None
                if judgement.verdict is Verdict.REJECT:
                    here.reject(judgement)
                self._revived.add(parked.id)
                if isinstance(here.record, RevisionDetails):
                    self._seen(key, here.record.hash)
                if id(here) in batch.placed:
                    batch.out.remove(here)
                    batch.placed.discard(id(here))
                out.append(here)
                continue
            entry = self.revive(parked, verdict, ordered=False)
            if entry is not None:
                out.append(entry)
                self._revived.add(parked.id)
                if isinstance(entry.record, RevisionDetails):
                    self._seen(key, entry.record.hash)
        return out

    def ordered_releases(self, *, drain: bool = False) -> list[Entry]:
        """Journal order: blocks released because their predecessor is missing (a gap given up,
        the first block of the stream, the end of the input), with what follows them."""
        if self.order is None:
            return []
        out: list[Entry] = []
        batch = _Batch(self.store, [])
        for strand, seq in self.order.due(drain=drain):
            key = (strand, seq)
            verdict = self.store.blocks([key]).get(key)
            if verdict is None:
                continue
            self.order.next[strand] = seq
            out += self._release(key, verdict, batch, force=True)
        return out

    def revive(
        self, parked: ParkedRecord, verdict: BlockVerdict | None = None, *, ordered: bool = True
    ) -> Entry | None:
        """A parked record as an entry again: decoded and verified from its bytes, then judged."""
        if parked.decoded is not None:  # kept in memory, verified when it was parked
            user, record = parked.decoded
            entry = Entry(-1, user, record)
            entry.foreign = True
            entry.release = parked
            failures = []
        else:
            user = parked.user_record()
            entry = Entry(-1, user, None)
            entry.foreign = True
            entry.release = parked
            try:
                record = decode(user)
                failures = self.verifier.verify(record)
            except PoisonRecordError as exc:  # it decoded when it was parked: the store changed it
                entry.poison = ("decode", exc, None, None)
                return entry
            entry.record = record
        if failures:
            entry.poison = (
                "verify",
                PoisonRecordError("; ".join(f"{f.check}: {f.message}" for f in failures), user.position),
                record,
                failures,
            )
            return entry
        if verdict is None:
            verdict = self.store.blocks([parked.key]).get(parked.key)
        judgement = self._judge(record, parked.key, verdict, ordered=ordered)
        if judgement.verdict is Verdict.WAIT:
            return None
        if judgement.verdict is Verdict.REJECT:
            entry.reject(judgement)
        elif self.masker is not None and record.masker is None:
            record.mask_with(self.masker)
        return entry

    # -- records that waited too long --------------------------------------------------------------
    def expired(self, limit: int = 100, *, everything: bool = False) -> list[Entry]:
        """Records parked longer than ``max_wait`` (``everything``: all, at the end of the input):
        delivered if their block is decided by now, else rejected as unverifiable (they go to the
        DLQ; never to a handler)."""
        out = []
        before = float("inf") if everything else self.wall_clock() - self.max_wait
        for parked in self.store.expired(before, limit):
            if parked.id in self._revived:
                continue
            verdict = self.store.blocks([parked.key]).get(parked.key)
            entry = self.revive(parked, verdict, ordered=False)
            if entry is None:  # still undecided: unverifiable
                entry = Entry(-1, parked.user_record(), None)
                entry.foreign = True
                entry.release = parked
                try:
                    entry.record = decode(entry.user)  # type: ignore[arg-type]
                except PoisonRecordError:
                    entry.record = None
                strand, seq = parked.key
                what = (
                    f"no block summary for block {strand}/{seq} arrived"
                    if verdict is None
                    else f"no successor confirmed block {strand}/{seq}'s blockHash"
                )
                entry.reject(
                    Judgement(
                        Verdict.REJECT,
                        "V3" if verdict is None else "V9",
                        f"unverifiable: {what} "
                        + ("before the end of the input" if everything else f"within {self.max_wait:.0f} s"),
                    )
                )
            out.append(entry)
        return out
