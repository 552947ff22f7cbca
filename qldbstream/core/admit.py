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

from qldbstream.core.decode import BlockSummary, RevisionDetails
from qldbstream.core.entries import Batch, Caps, Entry
from qldbstream.core.errors import DecodeError
from qldbstream.core.gate import OWN_BLOCK_CHECKS, WAIT, BlockKey, BlockVerdict, Delivery, Judgement, Verdict
from qldbstream.core.gate_store import GateStore, ParkedRecord
from qldbstream.core.order import JournalOrder
from qldbstream.core.release import Releases
from qldbstream.core.scan import block_documents
from qldbstream.core.verify import Verifier

__all__ = ["Admission"]

log = logging.getLogger("qldbstream.admit")


class Admission(Releases):
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
        #: in memory: blocks whose listed revisions (or, chain-confirmed, whose predecessor) are
        #: not all finished yet, and since when - their summaries hold their shards' checkpoints
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
        batch = Batch(self.store, entries[:limit])
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

    def _revision(self, e: Entry, r: RevisionDetails, batch: Batch) -> list[Entry]:
        ba = r.block_address
        key = (ba.strand_id, ba.sequence_no)
        verdict = batch.known.get(key)
        judgement = self._judge(r, key, verdict)
        if judgement.verdict is Verdict.REJECT:
            e.reject(judgement)
        if judgement.verdict is not Verdict.WAIT:
            e.sees = key  # its block summary holds until it is finished (``finished``)
            return []
        self._park(e, key, "revision", batch)
        # journal order: the block may have waited only for this revision
        ready = self.order is not None and verdict is not None and e.parked is not None
        if ready and self._may_release(key, verdict, batch):  # type: ignore[arg-type]
            return self._release(key, verdict, batch)  # type: ignore[arg-type]
        return []

    def _park(self, e: Entry, key: BlockKey, kind: str, batch: Batch) -> None:
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

    def _block(self, e: Entry, b: BlockSummary, batch: Batch) -> list[Entry]:
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
