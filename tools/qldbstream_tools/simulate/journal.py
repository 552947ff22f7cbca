"""The journal: blocks, revisions and every hash QLDB commits, computed from the transactions.

For each committed transaction (qldb-stream-format.md §3.3-§3.4, §4, §5):

* each written document gets one revision ``{data, metadata {id, version, txTime, txId}}``
  with ``hash = dot(H(metadata), H(data))``. A delete has no data; its hash is taken to be
  ``H(metadata)`` - **the spec's inference V2b**, never checked against real QLDB data;
* ``statementDigest = fold(dot, [H(text as an Ion string), H(p1), ..., H(pn)])`` with the
  parameter values the application bound;
* ``entriesHashList`` has the shape of every real block seen: ``[opaque, merkle(revision
  hashes), opaque, H(transactionInfo)]``, plus ``H(redactionInfo)`` for a block that ran
  ``redact_revision`` (positions are :data:`REVISIONS_ROOT`, :data:`TRANSACTION_INFO`,
  :data:`REDACTION_INFO`; the opaque entries are seeded random hashes, standing for QLDB's
  internal ones);
* ``entriesHash = merkle_root(entriesHashList)``, ``blockHash = dot(entriesHash,
  previousBlockHash)``, one continuous chain on one strand.

``H`` is :func:`qldbstream.core.ion.hash.ion_hash`; ``dot`` and ``merkle_root`` come from
:mod:`qldbstream.core.qldb_hash`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qldbstream.core.ion.hash import ion_hash
from qldbstream.core.qldb_hash import dot, merkle_root
from qldbstream_tools.simulate.model import Op, Statement, Transaction
from qldbstream_tools.simulate.values import IonValue, base62_id, timestamp_ms

__all__ = [
    "REDACTION_INFO",
    "REVISIONS_ROOT",
    "TRANSACTION_INFO",
    "Block",
    "Journal",
    "Revision",
    "build_journal",
    "revision_hash",
    "statement_digest",
]

#: Positions in ``entriesHashList``.
REVISIONS_ROOT, TRANSACTION_INFO, REDACTION_INFO = 1, 3, 4


@dataclass(frozen=True, slots=True)
class Revision:
    """One user revision as the journal holds it (always with its original data)."""

    table: str
    table_id: str
    document_id: str
    version: int
    op: Op
    sequence_no: int
    tx_id: str
    tx_time_ms: int
    data: IonValue | None
    metadata: dict[str, IonValue]
    hash: bytes
    data_hash: bytes | None


@dataclass(slots=True)
class Block:
    """One journal block and everything its BLOCK_SUMMARY shows."""

    sequence_no: int
    kind: str
    transaction_id: str
    timestamp_ms: int
    #: Statements with the parameter values bound (the redaction's are filled in here).
    statements: list[Statement]
    transaction_info: dict[str, IonValue]
    redaction_info: dict[str, IonValue] | None
    #: ``revisionSummaries`` in journal order: ``(hash, documentId or None for a system revision)``.
    summaries: list[tuple[bytes, str | None]]
    #: The user revisions, in ``summaries`` order.
    revisions: list[Revision]
    entries_hash_list: list[bytes]
    entries_hash: bytes
    previous_block_hash: bytes
    block_hash: bytes

    def has_parameters(self, statement: int) -> bool:
        return bool(self.statements[statement].parameters)


@dataclass(slots=True)
class Journal:
    """The blocks of one strand, in sequence order, and an index of the user revisions."""

    strand_id: str
    blocks: list[Block]
    revisions: dict[tuple[str, int], Revision] = field(default_factory=dict)
    #: (documentId, version) -> sequenceNo of the block that redacted it.
    redacted: dict[tuple[str, int], int] = field(default_factory=dict)

    def block(self, sequence_no: int) -> Block:
        index = sequence_no - self.blocks[0].sequence_no
        if not 0 <= index < len(self.blocks):
            raise KeyError(f"no block {sequence_no} in the journal")
        return self.blocks[index]


def revision_hash(metadata_hash: bytes, data_hash: bytes | None) -> bytes:
    """``dot(H(metadata), H(data))``; for a delete (no data) ``H(metadata)`` - inference V2b."""
    return metadata_hash if data_hash is None else dot(metadata_hash, data_hash)


def statement_digest(text_hash: bytes, parameter_hashes: Sequence[bytes]) -> bytes:
    """``fold(dot, [H(text), H(p1), ..., H(pn)])`` (a left fold: ``dot`` is not associative)."""
    acc = text_hash
    for h in parameter_hashes:
        acc = dot(acc, h)
    return acc


def _block_address(strand_id: str, sequence_no: int) -> dict[str, IonValue]:
    return {"strandId": strand_id, "sequenceNo": sequence_no}


class _Builder:
    def __init__(self, strand_id: str, table_ids: Mapping[str, str], rng: random.Random) -> None:
        self.strand_id = strand_id
        self.table_ids = table_ids
        self.rng = rng
        self.text_hashes: dict[str, bytes] = {}
        self.journal = Journal(strand_id, [])

    def opaque(self) -> bytes:
        return self.rng.getrandbits(256).to_bytes(32, "big")

    def text_hash(self, text: str) -> bytes:
        h = self.text_hashes.get(text)
        if h is None:
            h = self.text_hashes[text] = ion_hash(text)
        return h

    def add(self, tx: Transaction, sequence_no: int, previous: bytes) -> Block:
        tx_id = base62_id(self.rng)
        tx_time = timestamp_ms(tx.tx_time_ms)
        # Hash each value object once: an INSERT's parameter is usually the revision's data.
        seen: dict[int, tuple[IonValue, bytes]] = {}

        def h(value: IonValue) -> bytes:
            hit = seen.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
            digest = ion_hash(value)
            seen[id(value)] = (value, digest)
            return digest

        revisions: list[Revision] = []
        documents: dict[str, IonValue] = {}
        for w in tx.writes:
            table_id = self.table_ids[w.table]
            metadata = {"id": w.document_id, "version": w.version, "txTime": tx_time, "txId": tx_id}
            data_hash = None if w.data is None else h(w.data)
            rev = Revision(
                w.table,
                table_id,
                w.document_id,
                w.version,
                w.op,
                sequence_no,
                tx_id,
                tx.tx_time_ms,
                w.data,
                metadata,
                revision_hash(ion_hash(metadata), data_hash),
                data_hash,
            )
            revisions.append(rev)
            self.journal.revisions[(w.document_id, w.version)] = rev
            documents[w.document_id] = {"tableName": w.table, "tableId": table_id, "statements": w.statements}
        summaries: list[tuple[bytes, str | None]] = [(r.hash, r.document_id) for r in revisions]
        for _ in range(tx.system_revisions):
            summaries.insert(tx.system_position, (self.opaque(), None))

        redaction_info = None
        statements = tx.statements
        if tx.redactions:
            targets = [self.journal.revisions[(r.document_id, r.version)] for r in tx.redactions]
            redaction_info = {
                "revisions": [
                    {
                        "blockAddress": _block_address(self.strand_id, t.sequence_no),
                        "tableId": t.table_id,
                        "documentId": t.document_id,
                        "version": t.version,
                    }
                    for t in targets
                ]
            }
            first = targets[0]
            params = (_block_address(self.strand_id, first.sequence_no), first.table_id, first.document_id)
            statements = [Statement(statements[0].text, params, statements[0].start_ms)]
            for t in targets:
                self.journal.redacted[(t.document_id, t.version)] = sequence_no

        transaction_info = {
            "statements": [
                {
                    "statement": s.text,
                    "startTime": timestamp_ms(s.start_ms),
                    "statementDigest": statement_digest(self.text_hash(s.text), [h(p) for p in s.parameters]),
                }
                for s in statements
            ],
            "documents": documents,
        }
        entries = [self.opaque(), merkle_root([s[0] for s in summaries]), self.opaque(), h(transaction_info)]
        if redaction_info is not None:
            entries.append(h(redaction_info))
        entries_hash = merkle_root(entries)
        block = Block(
            sequence_no,
            tx.kind,
            tx_id,
            tx.commit_ms,
            statements,
            transaction_info,
            redaction_info,
            summaries,
            revisions,
            entries,
            entries_hash,
            previous,
            dot(entries_hash, previous),
        )
        self.journal.blocks.append(block)
        return block


def build_journal(
    transactions: Sequence[Transaction],
    *,
    strand_id: str,
    table_ids: Mapping[str, str],
    start_sequence_no: int,
    rng: random.Random,
) -> Journal:
    """Commit ``transactions`` in order as blocks ``start_sequence_no``, ``start_sequence_no + 1``, ...

    The first block's ``previousBlockHash`` is a seeded random hash: the block before it is not
    part of the stream.
    """
    builder = _Builder(strand_id, table_ids, rng)
    previous = builder.opaque()
    for i, tx in enumerate(transactions):
        previous = builder.add(tx, start_sequence_no + i, previous).block_hash
    return builder.journal
