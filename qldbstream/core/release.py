"""The half of :class:`~qldbstream.core.admit.Admission` that decides and releases parked records.

:class:`Releases` judges a record against its block's verdict (and, with journal order, its
block's turn), judges the links between blocks (``chain-confirmed``), releases the records parked
for a block once it is decided - with journal order, the blocks that waited for it too - and,
in memory, keeps a block summary holding its shard's checkpoint until its revisions are finished
(the pipeline reports them: :meth:`Releases.finished`).
It also revives parked records from their bytes and gives up on those that waited too long.
:class:`~qldbstream.core.admit.Admission` sets the state declared here and runs the batch loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from qldbstream.core.decode import JournalRecord, RevisionDetails, decode
from qldbstream.core.entries import Batch, Caps, Entry
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.gate import (
    WAIT,
    BlockKey,
    BlockVerdict,
    Delivery,
    Judgement,
    Link,
    Verdict,
    judge_block,
    judge_revision,
)
from qldbstream.core.gate_store import GateStore, ParkedRecord
from qldbstream.core.order import JournalOrder
from qldbstream.core.verify import Verifier

__all__ = ["Releases"]

#: what a chain-confirmed block summary also waits to see: the block before it
_PREVIOUS = b"previous block"


class Releases:
    """Judging, releasing and reviving parked records; the state is set by ``Admission.__init__``."""

    store: GateStore
    anchors: Mapping[BlockKey, bytes]
    order: JournalOrder | None
    verifier: Verifier
    delivery: Delivery
    max_wait: float
    wall_clock: Callable[[], float]
    masker: object
    caps: Caps
    lifted: set[str | None]
    _arrivals: dict[BlockKey, float | None]
    _unseen: dict[BlockKey, tuple[set[bytes], float]]
    _settled: OrderedDict[BlockKey, None]
    _hold_caps: dict[BlockKey, list[tuple[str | None, str]]]
    _revived: set[str]

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

    def _may_release(self, key: BlockKey, verdict: BlockVerdict, batch: Batch) -> bool:
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

    def _track_unseen(self, e: Entry, key: BlockKey, verdict: BlockVerdict, batch: Batch) -> None:
        """In memory: a block summary holds its shard's checkpoint until every revision it lists is
        finished - delivered to every handler or dead-lettered, not merely judged (and, chain-confirmed,
        its predecessor settled): after a restart the gate's verdicts are gone, and a revision read
        again (its handler failed, its shard halted before it) could not be verified if the checkpoint
        had passed its summary. Each judged revision carries ``sees``; :meth:`finished` lets go."""
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

    def finished(self, entries: Iterable[Entry]) -> None:
        """The pipeline's report after delivery: each judged revision (``sees`` set) now settled -
        delivered to every handler that wants it or dead-lettered, and not held back - no longer keeps
        its block summary holding its shard's checkpoint. Reported once; call before the checkpoint."""
        unseen = self._unseen
        for e in entries:
            key = e.sees
            if key is None or key not in unseen:
                continue  # nothing to report, or its block summary holds no more (a durable store, time)
            if isinstance(e.record, RevisionDetails) and e.settled():
                e.sees = None
                self._seen(key, e.record.hash)

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
        self, key: BlockKey, verdict: BlockVerdict, batch: Batch, *, force: bool = False
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
                    later.sees = k
                    judgement = self._judge(later.record, k, v)  # type: ignore[arg-type]
                    if judgement.verdict is Verdict.REJECT:
                        later.reject(judgement)
                nxt = (k[0], k[1] + 1)
                if nxt[1] in order.waiting.get(k[0], {}):
                    found = self.store.blocks([nxt]).get(nxt)
                    if found is not None:
                        todo.append((nxt, found))
        return out

    def _revive_parked(self, key: BlockKey, verdict: BlockVerdict, batch: Batch) -> list[Entry]:
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
                    here.sees = key
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
                    entry.sees = key
        return out

    def ordered_releases(self, *, drain: bool = False) -> list[Entry]:
        """Journal order: blocks released because their predecessor is missing (a gap given up,
        the first block of the stream, the end of the input), with what follows them."""
        if self.order is None:
            return []
        out: list[Entry] = []
        batch = Batch(self.store, [])
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
