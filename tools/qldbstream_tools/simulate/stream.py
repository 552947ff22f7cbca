"""Journal stream records: the Ion structs QLDB writes to Kinesis, one per journal item.

Each record is a top-level struct ``{qldbStreamArn, recordType, payload}`` serialized on its own
as an Ion binary stream (version marker + local symbol table + the struct), exactly as the real
records are (qldb-stream-format.md §3). The stream is ``CONTROL CREATED``, then per block its
``BLOCK_SUMMARY`` followed by one ``REVISION_DETAILS`` per user revision in
``revisionSummaries`` order, then (for a bounded stream) ``CONTROL COMPLETED``.

A stream replayed after a ``redact_revision`` shows the redacted revision with ``dataHash``
(= IonHash of the original data) in place of ``data``; its ``hash`` is unchanged. A deleted
document's revision has neither.

Each record's *partition key* is the one QLDB uses inside its KPL aggregates: the lowercase hex
of ``blockHash`` (BLOCK_SUMMARY) or ``revision.hash`` (REVISION_DETAILS) [OBS, 9 of 9 real
records]. CONTROL records carry no hash; they get the hex SHA-256 of ``<streamArn>/<type>``
[INF: no real CONTROL record has been published].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from amazon.ion import simpleion

from qldbstream.core.ion.hash import ion_hash
from qldbstream.core.qldb_hash import dot, merkle_root
from qldbstream_tools.simulate.fields import set_path
from qldbstream_tools.simulate.journal import (
    REDACTION_INFO,
    REVISIONS_ROOT,
    TRANSACTION_INFO,
    Block,
    Journal,
    Revision,
    revision_hash,
)
from qldbstream_tools.simulate.values import IonValue, timestamp_ms

__all__ = [
    "RecordType",
    "StreamRecord",
    "block_summary",
    "build_records",
    "rehash_block",
    "rehash_revision",
    "revision_details",
]

RecordType = Literal["CONTROL", "BLOCK_SUMMARY", "REVISION_DETAILS"]


@dataclass(slots=True)
class StreamRecord:
    """One journal stream record: its Ion value, where it sits in the journal, its partition key."""

    record_type: RecordType
    value: dict[str, IonValue]
    partition_key: str
    #: The block it belongs to (``None`` for CONTROL).
    sequence_no: int | None = None
    document_id: str | None = None
    version: int | None = None
    #: The time QLDB wrote it (the block's commit time; for CONTROL the stream's start / end).
    time_ms: int = 0
    _data: bytes | None = field(default=None, repr=False)

    @property
    def data(self) -> bytes:
        """The Ion binary bytes of the record (computed once; reset by :meth:`replace_value`)."""
        if self._data is None:
            self._data = simpleion.dumps(self.value, binary=True)
        return self._data

    def replace_value(self, value: dict[str, IonValue]) -> None:
        self.value = value
        self._data = None

    def describe(self) -> str:
        if self.record_type == "REVISION_DETAILS":
            return f"REVISION_DETAILS {self.document_id} version {self.version} (block {self.sequence_no})"
        if self.record_type == "BLOCK_SUMMARY":
            return f"BLOCK_SUMMARY {self.sequence_no}"
        return f"CONTROL {self.value['payload']['controlRecordType']}"


def _address(strand_id: str, sequence_no: int) -> dict[str, IonValue]:
    return {"strandId": strand_id, "sequenceNo": sequence_no}


def block_summary(strand_id: str, block: Block) -> dict[str, IonValue]:
    """The ``payload`` of a BLOCK_SUMMARY, fields in the order of the real records."""
    payload: dict[str, IonValue] = {
        "blockAddress": _address(strand_id, block.sequence_no),
        "transactionId": block.transaction_id,
        "blockTimestamp": timestamp_ms(block.timestamp_ms),
        "blockHash": block.block_hash,
        "entriesHash": block.entries_hash,
        "previousBlockHash": block.previous_block_hash,
        "entriesHashList": list(block.entries_hash_list),
        "transactionInfo": block.transaction_info,
    }
    if block.redaction_info is not None:
        payload["redactionInfo"] = block.redaction_info
    payload["revisionSummaries"] = [
        {"hash": h} if document_id is None else {"hash": h, "documentId": document_id}
        for h, document_id in block.summaries
    ]
    return payload


def revision_details(strand_id: str, rev: Revision, *, redacted: bool) -> dict[str, IonValue]:
    """The ``payload`` of a REVISION_DETAILS: with ``data``, ``dataHash`` (redacted) or neither (deleted)."""
    revision: dict[str, IonValue] = {
        "blockAddress": _address(strand_id, rev.sequence_no),
        "hash": rev.hash,
    }
    if rev.data is not None:
        if redacted:
            revision["dataHash"] = rev.data_hash
        else:
            revision["data"] = rev.data
    revision["metadata"] = rev.metadata
    return {"tableInfo": {"tableName": rev.table, "tableId": rev.table_id}, "revision": revision}


def _control(arn: str, kind: str, time_ms: int) -> StreamRecord:
    value = {"qldbStreamArn": arn, "recordType": "CONTROL", "payload": {"controlRecordType": kind}}
    key = hashlib.sha256(f"{arn}/{kind}".encode()).hexdigest()
    return StreamRecord("CONTROL", value, key, time_ms=time_ms)


def build_records(
    journal: Journal,
    stream_arn: str,
    *,
    start_ms: int,
    completed: bool = True,
    replayed: bool = True,
) -> list[StreamRecord]:
    """Every record of the stream, in journal order.

    ``replayed``: the stream is read after the redactions, so redacted revisions show
    ``dataHash`` (``False``: as a live stream wrote them before the redaction).
    """
    strand = journal.strand_id
    out = [_control(stream_arn, "CREATED", start_ms)]
    for block in journal.blocks:
        out.append(
            StreamRecord(
                "BLOCK_SUMMARY",
                {
                    "qldbStreamArn": stream_arn,
                    "recordType": "BLOCK_SUMMARY",
                    "payload": block_summary(strand, block),
                },
                block.block_hash.hex(),
                block.sequence_no,
                time_ms=block.timestamp_ms,
            )
        )
        for rev in block.revisions:
            redacted = replayed and (rev.document_id, rev.version) in journal.redacted
            out.append(
                StreamRecord(
                    "REVISION_DETAILS",
                    {
                        "qldbStreamArn": stream_arn,
                        "recordType": "REVISION_DETAILS",
                        "payload": revision_details(strand, rev, redacted=redacted),
                    },
                    rev.hash.hex(),
                    block.sequence_no,
                    rev.document_id,
                    rev.version,
                    time_ms=block.timestamp_ms,
                )
            )
    if completed:
        last = journal.blocks[-1].timestamp_ms if journal.blocks else start_ms
        out.append(_control(stream_arn, "COMPLETED", last + 1000))
    return out


def rehash_revision(rec: StreamRecord, block_rec: StreamRecord, whole_block: bool) -> None:
    """A forger's consistent revision: recompute ``revision.hash`` from its own content, patch the
    summary entry (and with ``whole_block`` the block's hashes); partition keys follow."""
    revision = rec.value["payload"]["revision"]
    data_hash = ion_hash(revision["data"]) if "data" in revision else revision.get("dataHash")
    new_hash = revision_hash(ion_hash(revision["metadata"]), data_hash)
    old_hash = bytes.fromhex(rec.partition_key)
    rec.replace_value(set_path(rec.value, ["payload", "revision", "hash"], new_hash))
    rec.partition_key = new_hash.hex()
    summaries = block_rec.value["payload"]["revisionSummaries"]
    for i, entry in enumerate(summaries):
        if entry.get("documentId") == rec.document_id and entry["hash"] == old_hash:
            block_rec.replace_value(
                set_path(block_rec.value, ["payload", "revisionSummaries", i, "hash"], new_hash)
            )
            break
    if whole_block:
        rehash_block(block_rec)


def rehash_block(block_rec: StreamRecord) -> None:
    """Recompute entriesHashList[1,3,4], entriesHash and blockHash from the record's own content."""
    payload = block_rec.value["payload"]
    entries = list(payload["entriesHashList"])
    entries[REVISIONS_ROOT] = merkle_root([s["hash"] for s in payload["revisionSummaries"]])
    entries[TRANSACTION_INFO] = ion_hash(payload["transactionInfo"])
    if "redactionInfo" in payload:
        entries[REDACTION_INFO] = ion_hash(payload["redactionInfo"])
    entries_hash = merkle_root(entries)
    block_hash = dot(entries_hash, payload["previousBlockHash"])
    value = block_rec.value
    for key, v in (("entriesHashList", entries), ("entriesHash", entries_hash), ("blockHash", block_hash)):
        value = set_path(value, ["payload", key], v)
    block_rec.replace_value(value)
    block_rec.partition_key = block_hash.hex()
