"""The delivery gate: a revision reaches a handler only once every check that covers it passed.

A revision's own hash (V2) says nothing about whether QLDB committed it: a forger who changes
``data`` can recompute the revision hash, the block's summary entry, ``entriesHashList``,
``entriesHash`` and even ``blockHash``. What ties a revision to the ledger is its block:

==========  ===================================================================================
V2          the revision's hash matches its metadata and data (checked on the record itself)
V3          its block's ``revisionSummaries`` list this hash for this document, the revision's
            ``blockAddress`` names that block and its ``txId`` is the block's ``transactionId``
V4/V7/V8    the block's own hashes hold together (revisions root in ``entriesHashList``, the
            Merkle root, ``blockHash``); V5/V6 its ``transactionInfo`` and statement digests
tableInfo   the revision's ``tableInfo`` (not hashed) agrees with the block's hashed
            ``transactionInfo.documents`` entry for the document
V9          (``delivery = chain-confirmed``) the *next* block's ``previousBlockHash`` confirms
            this block's ``blockHash``; a broken link withholds the earlier block, since a forger
            who recomputes a block's hash breaks only the link to its successor
==========  ===================================================================================

A block summary and its revisions may arrive in either order, on different shards, in different
processes. The gate keeps a :class:`BlockVerdict` per block in a store
(:class:`~qldbstream.core.gate_store.GateStore`) and *parks* a record whose block is not decided
yet (:class:`~qldbstream.core.gate_store.ParkedRecord`); whoever records the block's verdict (or
the link that confirms it) releases the parked records of that block. A store is either
*durable* (DynamoDB: Lambda and the KCL, where the next record may be read by another process) -
a parked record is then as safe as a delivered one and the checkpoint may pass it - or in memory
(one process): the checkpoint then stays before the oldest parked record of each shard.

Everything here is pure (the store port and the parked records are in
:mod:`qldbstream.core.gate_store`); the pipeline (:mod:`qldbstream.pipeline.batch`) decides what to
do with a :class:`Judgement`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from qldbstream.core.decode import BlockSummary, RevisionDetails

__all__ = [
    "OWN_BLOCK_CHECKS",
    "VOUCHING_CHECKS",
    "BlockKey",
    "BlockVerdict",
    "Delivery",
    "Judgement",
    "Link",
    "RevisionIdentity",
    "WholeInputGate",
    "judge_block",
    "judge_revision",
]

#: (strandId, sequenceNo)
BlockKey = tuple[str, int]


class Delivery(StrEnum):
    """What must hold before a record is delivered (``QLDBSTREAM_DELIVERY``)."""

    #: every check of the record and of its block passed (V2-V8, tableInfo)
    VERIFIED = "verified"
    #: also: the next block's ``previousBlockHash`` confirmed the block's ``blockHash`` (V9)
    CHAIN_CONFIRMED = "chain-confirmed"


class Link(StrEnum):
    """What the block's successor said of its ``blockHash``."""

    UNKNOWN = "unknown"
    CONFIRMED = "confirmed"
    BROKEN = "broken"


@dataclass(slots=True)
class BlockVerdict:
    """What the gate remembers of one block summary: enough to judge its revisions later."""

    strand_id: str
    sequence_no: int
    block_hash: bytes
    previous_hash: bytes
    transaction_id: str
    #: the block's own checks that failed ("V4/V8", ...); empty when they all passed
    failed: str
    #: documented ``revisionSummaries``: revision hash -> documentId
    entries: dict[bytes, str]
    #: ``transactionInfo.documents``: documentId -> (tableName, tableId); ``None`` without transactionInfo
    tables: dict[str, tuple[str, str]] | None
    link: Link = Link.UNKNOWN

    @property
    def key(self) -> BlockKey:
        return (self.strand_id, self.sequence_no)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_item(self) -> dict[str, Any]:
        """A JSON-safe dict (hashes in base64) for stores."""
        b64 = _b64
        return {
            "strandId": self.strand_id,
            "sequenceNo": self.sequence_no,
            "blockHash": b64(self.block_hash),
            "previousBlockHash": b64(self.previous_hash),
            "transactionId": self.transaction_id,
            "failed": self.failed,
            "entries": {b64(h): doc for h, doc in self.entries.items()},
            "tables": None if self.tables is None else {d: list(t) for d, t in self.tables.items()},
            "link": self.link.value,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> BlockVerdict:
        unb64 = base64.b64decode
        tables = item.get("tables")
        return cls(
            item["strandId"],
            int(item["sequenceNo"]),
            unb64(item["blockHash"]),
            unb64(item["previousBlockHash"]),
            item["transactionId"],
            item["failed"],
            {unb64(h): doc for h, doc in item["entries"].items()},
            None if tables is None else {d: (t[0], t[1]) for d, t in tables.items()},
            Link(item.get("link", "unknown")),
        )

    @classmethod
    def of(
        cls, block: BlockSummary, failed_checks: Sequence[str], tables: dict[str, tuple[str, str]] | None
    ) -> BlockVerdict:
        ba = block.block_address
        return cls(
            ba.strand_id,
            ba.sequence_no,
            block.block_hash,
            block.previous_block_hash,
            block.transaction_id,
            "/".join(sorted(set(failed_checks) & VOUCHING_CHECKS)),
            {h: doc for h, doc in block.summary_entries if doc is not None},
            tables,
        )


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


#: The checks that make a block summary itself untrustworthy (V3 pairs and V9 links are judged apart).
OWN_BLOCK_CHECKS = frozenset({"V4", "V5", "V6", "V7", "V8"})
#: The checks that tie a block's revisions to its hash: when one fails, the block vouches for none of
#: them (V6 concerns only the statement texts, which no revision depends on).
VOUCHING_CHECKS = frozenset({"V4", "V5", "V7", "V8"})


class Verdict(StrEnum):
    ADMIT = "admit"
    WAIT = "wait"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    #: for REJECT: the check that failed ("V3", "V8", "tableInfo", ...) and why
    check: str = ""
    reason: str = ""


ADMIT = Judgement(Verdict.ADMIT)
WAIT = Judgement(Verdict.WAIT)


def _chain(verdict: BlockVerdict, delivery: Delivery) -> Judgement:
    if delivery is Delivery.CHAIN_CONFIRMED:
        if verdict.link is Link.BROKEN:
            return Judgement(
                Verdict.REJECT,
                "V9",
                f"block {verdict.sequence_no}'s blockHash is not the one its successor's link (or a "
                "supplied digest's proof) confirms: the block is not confirmed by the chain",
            )
        if verdict.link is not Link.CONFIRMED:
            return WAIT
    return ADMIT


def judge_block(verdict: BlockVerdict, delivery: Delivery) -> Judgement:
    """May the block summary itself be delivered?"""
    if verdict.failed:
        return Judgement(
            Verdict.REJECT, verdict.failed, f"block {verdict.sequence_no} failed {verdict.failed}"
        )
    return _chain(verdict, delivery)


class RevisionIdentity(Protocol):
    """What judging a revision reads: a :class:`~qldbstream.core.decode.RevisionDetails` or a light copy."""

    @property
    def document_id(self) -> str: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def tx_id(self) -> str: ...
    @property
    def table_name(self) -> str: ...
    @property
    def table_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Identity:
    document_id: str
    hash: bytes
    tx_id: str
    table_name: str
    table_id: str


def judge_revision(revision: RevisionIdentity, verdict: BlockVerdict | None, delivery: Delivery) -> Judgement:
    """May ``revision`` (whose own V2 passed) be delivered, given its block's verdict (None: unknown yet)?"""
    if verdict is None:
        return WAIT
    seq = verdict.sequence_no
    if verdict.failed:
        return Judgement(
            Verdict.REJECT,
            verdict.failed,
            f"its block {seq} failed {verdict.failed}: the block does not vouch for this revision",
        )
    doc = revision.document_id
    listed = verdict.entries.get(revision.hash)
    if listed is None:
        return Judgement(
            Verdict.REJECT,
            "V3",
            f"revision hash is not among block {seq}'s revisionSummaries "
            "(its data or its blockAddress was altered)",
        )
    if listed != doc:
        return Judgement(Verdict.REJECT, "V3", f"block {seq} lists this revision hash for document {listed}")
    if revision.tx_id != verdict.transaction_id:
        return Judgement(Verdict.REJECT, "V3", f"metadata.txId differs from block {seq}'s transactionId")
    if verdict.tables is not None:
        table = verdict.tables.get(doc)
        if table is None:
            return Judgement(
                Verdict.REJECT,
                "tableInfo",
                f"block {seq}'s transactionInfo.documents does not name document {doc}",
            )
        if table != (revision.table_name, revision.table_id):
            return Judgement(
                Verdict.REJECT,
                "tableInfo",
                f"tableInfo {revision.table_name}/{revision.table_id} differs from block {seq}'s "
                f"transactionInfo.documents ({table[0]}/{table[1]})",
            )
    return _chain(verdict, delivery)


def _link(earlier: BlockVerdict, later: BlockVerdict) -> None:
    if earlier.link is not Link.BROKEN:
        earlier.link = Link.CONFIRMED if later.previous_hash == earlier.block_hash else Link.BROKEN


class WholeInputGate:
    """The gate for tools that see a whole input before answering (``verify``, ``dr-check``).

    Feed every block summary and revision, in any order; :meth:`rejected` then says which
    revisions the gate would withhold and why. Revisions whose block summary is not in the input
    are neither admitted nor rejected: :meth:`undecided` lists them.
    """

    def __init__(self, delivery: Delivery = Delivery.VERIFIED) -> None:
        self.delivery = delivery
        self._blocks: dict[BlockKey, BlockVerdict] = {}
        self._revisions: dict[str, tuple[BlockKey, _Identity]] = {}

    def block(
        self, block: BlockSummary, failed_checks: Sequence[str], tables: dict[str, tuple[str, str]] | None
    ) -> None:
        verdict = BlockVerdict.of(block, failed_checks, tables)
        stored = self._blocks.setdefault(verdict.key, verdict)
        if stored.block_hash != verdict.block_hash and not stored.failed:
            stored.failed = "V9"  # two different blocks claim one place: neither vouches
        if self.delivery is Delivery.CHAIN_CONFIRMED:
            strand, seq = verdict.key
            previous = self._blocks.get((strand, seq - 1))
            following = self._blocks.get((strand, seq + 1))
            if previous is not None:
                _link(previous, stored)
            if following is not None:
                _link(stored, following)

    def revision(self, key: str, revision: RevisionDetails) -> None:
        ba = revision.block_address
        identity = _Identity(
            revision.document_id, revision.hash, revision.tx_id, revision.table_name, revision.table_id
        )
        self._revisions.setdefault(key, ((ba.strand_id, ba.sequence_no), identity))

    def rejected(self) -> dict[str, Judgement]:
        out = {}
        for key, (block, identity) in self._revisions.items():
            judgement = judge_revision(identity, self._blocks.get(block), self.delivery)
            if judgement.verdict is Verdict.REJECT:
                out[key] = judgement
        return out

    def undecided(self) -> list[str]:
        return [key for key, (block, _) in self._revisions.items() if block not in self._blocks]
