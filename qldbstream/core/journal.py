"""The typed QLDB journal records that :mod:`qldbstream.core.decode` builds from a scan.

Three record types (qldb-stream-format.md §3): :class:`ControlRecord`, :class:`BlockSummary` and
:class:`RevisionDetails`, over a common :class:`JournalRecord` that keeps the record's Ion bytes
(``raw``) and parses them into exact Ion values only when a handler reads ``ion`` / ``data``. The
fields that routing and verification need are set by the decoder from the scan's tuple.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from qldbstream.core.ion.binary import header, read_timestamp
from qldbstream.core.records import Position, UserRecord

__all__ = [
    "DELETED",
    "LIVE",
    "REDACTED",
    "UNREADABLE",
    "BlockAddress",
    "BlockSummary",
    "ControlRecord",
    "JournalRecord",
    "RecordType",
    "RevisionDetails",
    "RevisionSummary",
    "Slot",
    "Statement",
]


class RecordType(StrEnum):
    """A journal record's ``recordType``: ``CONTROL``, ``BLOCK_SUMMARY`` or ``REVISION_DETAILS``."""

    CONTROL = "CONTROL"
    BLOCK_SUMMARY = "BLOCK_SUMMARY"
    REVISION_DETAILS = "REVISION_DETAILS"


class BlockAddress:
    """A block's place in the journal: strand and sequence number."""

    __slots__ = ("sequence_no", "strand_id")

    def __init__(self, strand_id: str, sequence_no: int) -> None:
        self.strand_id = strand_id
        self.sequence_no = sequence_no

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BlockAddress)
            and self.strand_id == other.strand_id
            and self.sequence_no == other.sequence_no
        )

    def __hash__(self) -> int:
        return hash((self.strand_id, self.sequence_no))

    def __repr__(self) -> str:
        return f"BlockAddress({self.strand_id!r}, {self.sequence_no})"


#: A field: (value position, value end) inside the record's bytes.
Slot = tuple[int, int]


class JournalRecord:
    """Common part of the three record types."""

    __slots__ = ("_ion", "_position", "masker", "raw", "stream_arn", "user_record")
    record_type: RecordType

    def __init__(
        self, raw: bytes, stream_arn: str, position: Position | None, user_record: UserRecord | None
    ):
        #: The record's Ion binary bytes, exactly as received.
        self.raw = raw
        self.stream_arn = stream_arn
        self._position = position
        self.user_record = user_record
        self._ion: Any = None
        #: a :class:`~qldbstream.core.masking.Masker` once the pipeline verified the record and the app masks
        self.masker: Any = None

    @property
    def position(self) -> Position:
        """Where the record came from (built from the user record on first use)."""
        position = self._position
        if position is None:
            assert self.user_record is not None  # _decode() always gets one of the two
            position = self._position = self.user_record.position
        return position

    @property
    def ion(self) -> Any:
        """The whole record as exact Ion values (parsed on first use, then cached).

        When the app masks (:meth:`mask_with`), revision data is masked; ``raw`` always holds the
        original bytes, which verification checked.
        """
        if self._ion is None:
            from amazon.ion import simpleion

            value = simpleion.loads(self.raw)
            self._ion = value if self.masker is None else self.masker.mask_record(value)
        return self._ion

    def mask_with(self, masker: Any) -> None:
        """From now on ``ion`` and ``data`` are masked by ``masker`` (the pipeline, after verification)."""
        self.masker = masker
        self._ion = None

    def original_ion(self) -> Any:
        """The unmasked Ion values: for sealing a dead letter, never for handlers or logs.

        A record that amazon-ion cannot load (the scanner accepted it) gives a stand-in whose
        ``payload.revision.data`` is :data:`UNREADABLE`: sealing a dead letter must not fail on it
        (the raw bytes are sealed as they are; the envelope's messages are then withheld whole).
        """
        from amazon.ion import simpleion

        try:
            return self.ion if self.masker is None else simpleion.loads(self.raw)
        except Exception:  # amazon-ion raises IonException, ValueError, UnicodeDecodeError, ...
            return {"payload": {"revision": {"data": UNREADABLE}}}


class _Unreadable:
    """What :meth:`JournalRecord.original_ion` gives for data amazon-ion cannot load."""

    def __repr__(self) -> str:
        return "UNREADABLE"


#: the stand-in for a document amazon-ion cannot load (see :meth:`JournalRecord.original_ion`)
UNREADABLE: Any = _Unreadable()


class ControlRecord(JournalRecord):
    """``CONTROL``: ``CREATED`` (first record of a stream) or ``COMPLETED`` (after the end time)."""

    __slots__ = ("control_record_type",)
    record_type = RecordType.CONTROL
    control_record_type: str

    def __repr__(self) -> str:
        return f"ControlRecord({self.control_record_type})"


class RevisionSummary:
    """One entry of a block summary's ``revisionSummaries``: a revision's hash and document id
    (``None`` for a revision that belongs to no document, e.g. a DDL statement's)."""

    __slots__ = ("document_id", "hash")

    def __init__(self, hash_: bytes, document_id: str | None) -> None:
        self.hash = hash_
        self.document_id = document_id


class Statement:
    """One PartiQL statement of a block's ``transactionInfo``."""

    __slots__ = ("digest", "text", "text_hash")

    def __init__(self, text: str, digest: bytes, text_hash: bytes) -> None:
        self.text = text
        self.digest = digest
        #: Ion hash of the statement text as an Ion string (= the digest when it has no parameters)
        self.text_hash = text_hash


class BlockSummary(JournalRecord):
    """``BLOCK_SUMMARY``: one committed transaction's block (qldb-stream-format.md §3.3)."""

    __slots__ = (
        "_statements",
        "_summaries",
        "block_address",
        "block_hash",
        "block_timestamp_slot",
        "chained_hash",
        "entries_hash",
        "entries_hash_list",
        "entries_root",
        "previous_block_hash",
        "redaction_info_hash",
        "statement_entries",
        "summaries_root",
        "summary_entries",
        "transaction_id",
        "transaction_info_hash",
    )
    record_type = RecordType.BLOCK_SUMMARY
    block_address: BlockAddress
    transaction_id: str
    block_timestamp_slot: Slot
    block_hash: bytes
    entries_hash: bytes
    previous_block_hash: bytes
    entries_hash_list: list[bytes]
    #: ``revisionSummaries`` as the scan gives them: ``(hash, documentId | None)`` pairs
    summary_entries: list[tuple[bytes, str | None]]
    #: the statements as the scan gives them: ``(statement, statementDigest, H(statement))``
    statement_entries: list[tuple[str, bytes, bytes]]
    _summaries: list[RevisionSummary] | None
    _statements: list[Statement] | None
    #: Ion hashes of ``transactionInfo`` / ``redactionInfo`` (``None`` when the field is absent)
    transaction_info_hash: bytes | None
    redaction_info_hash: bytes | None
    #: computed by the scan for V4 / V7 / V8: the Merkle root of the revisionSummaries hashes
    #: (``None`` when there are none), the Merkle root of entriesHashList, and
    #: dot(entriesHash, previousBlockHash)
    summaries_root: bytes | None
    entries_root: bytes
    chained_hash: bytes

    @property
    def sequence_no(self) -> int:
        return self.block_address.sequence_no

    def mask_with(self, masker: Any) -> None:
        super().mask_with(masker)
        self._statements = None  # built again, with the literals of masked fields masked

    # The objects below are built on first use: verification reads the scan's tuples, so a block
    # whose summaries and statements no handler reads never pays for them.
    @property
    def revision_summaries(self) -> list[RevisionSummary]:
        summaries = self._summaries
        if summaries is None:
            summaries = self._summaries = [RevisionSummary(h, d) for h, d in self.summary_entries]
        return summaries

    @property
    def statements(self) -> list[Statement]:
        statements = self._statements
        if statements is None:
            masker = self.masker  # masking on: literals of masked fields are masked in the texts
            statements = self._statements = [
                Statement(t if masker is None else masker.mask_statement(t), d, h)
                for t, d, h in self.statement_entries
            ]
        return statements

    @property
    def block_timestamp(self) -> Any:
        """Commit time as an amazon-ion ``Timestamp`` (precision and offset kept)."""
        return _timestamp(self.raw, self.block_timestamp_slot)

    @property
    def transaction_info(self) -> Any:
        return self.ion["payload"].get("transactionInfo")

    @property
    def redaction_info(self) -> Any:
        return self.ion["payload"].get("redactionInfo")

    def __repr__(self) -> str:
        return f"BlockSummary({self.block_address!r}, {len(self.revision_summaries)} revisions)"


LIVE, REDACTED, DELETED = 0, 1, 2


class RevisionDetails(JournalRecord):
    """``REVISION_DETAILS``: one committed document revision (qldb-stream-format.md §3.4).

    ``data`` is absent for a deleted document; a redacted revision carries ``dataHash`` in
    place of ``data``.
    """

    __slots__ = (
        "block_address",
        "content_hash",
        "data_hash",
        "document_id",
        "expected_hash",
        "hash",
        "kind",
        "metadata_hash",
        "table_id",
        "table_name",
        "tx_id",
        "tx_time_slot",
        "version",
    )
    record_type = RecordType.REVISION_DETAILS
    table_name: str
    table_id: str
    block_address: BlockAddress
    hash: bytes
    document_id: str
    version: int
    tx_id: str
    tx_time_slot: Slot
    kind: int
    #: ``dataHash`` of a redacted revision, else ``None``
    data_hash: bytes | None
    #: Ion hash of ``metadata``
    metadata_hash: bytes
    #: Ion hash of ``data`` for a live revision, ``dataHash`` for a redacted one, ``None`` if deleted
    content_hash: bytes | None
    #: what ``hash`` must equal (V2 / V2b): dot(metadata_hash, content_hash), or metadata_hash
    expected_hash: bytes

    @property
    def is_deleted(self) -> bool:
        return self.kind == DELETED

    @property
    def is_redacted(self) -> bool:
        return self.kind == REDACTED

    @property
    def data(self) -> Any:
        """The document as exact Ion values (``None`` when deleted or redacted)."""
        if self.kind != LIVE:
            return None
        return self.ion["payload"]["revision"]["data"]

    @property
    def metadata(self) -> Any:
        return self.ion["payload"]["revision"]["metadata"]

    @property
    def tx_time(self) -> Any:
        """Commit time of the revision as an amazon-ion ``Timestamp``."""
        return _timestamp(self.raw, self.tx_time_slot)

    def __repr__(self) -> str:
        kind = ("live", "redacted", "deleted")[self.kind]
        return f"RevisionDetails({self.table_name}/{self.document_id} v{self.version}, {kind})"


def _timestamp(raw: bytes, slot: Slot) -> Any:
    _, _, s, e = header(raw, slot[0], slot[1])
    return read_timestamp(raw, s, e)
