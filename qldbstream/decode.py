"""Stage 2: decode a user record into a typed QLDB journal record.

Every QLDB stream record is one Ion binary struct ``{qldbStreamArn, recordType, payload}``
(qldb-stream-format.md §3). Decoding reads the fields that routing and verification need and
checks their Ion types; the document itself (``revision.data``), ``metadata`` and
``transactionInfo`` stay as byte ranges of the record until something asks for them:

* verification hashes them straight from those bytes (:mod:`qldbstream.ion.hash`);
* handlers get exact Ion values (amazon-ion ``simpleion`` types: timestamps keep precision and
  offset, decimals their exponent, symbols stay symbols, typed nulls stay typed) parsed on
  first access and cached.

Anything that is not a well-formed QLDB record raises a
:class:`~qldbstream.errors.DecodeError` subclass carrying the record's position.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from qldbstream.errors import DecodeError, MalformedIonError, MalformedRecordError, UnknownRecordTypeError
from qldbstream.ion.binary import (
    T_BLOB,
    T_LIST,
    T_POSINT,
    T_STRING,
    T_STRUCT,
    T_SYMBOL,
    T_TIMESTAMP,
    DuplicateFieldError,
    RecordView,
    header,
    iter_list,
    parse_record,
    read_timestamp,
    read_uint,
    struct_slots,
)
from qldbstream.ion.hash import ion_hash_at
from qldbstream.qldb_hash import HASH_LENGTH
from qldbstream.records import Position, UserRecord

__all__ = [
    "BlockAddress",
    "BlockSummary",
    "ControlRecord",
    "JournalRecord",
    "RecordType",
    "RevisionDetails",
    "RevisionSummary",
    "Statement",
    "decode",
    "decode_bytes",
]


class RecordType(StrEnum):
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


# A field: (value position, value end) inside the record's bytes.
_Slot = tuple[int, int]


class JournalRecord:
    """Common part of the three record types."""

    __slots__ = ("_ion", "position", "stream_arn", "user_record", "view")
    record_type: RecordType

    def __init__(self, view: RecordView, stream_arn: str, position: Position, user_record: UserRecord | None):
        self.view = view
        self.stream_arn = stream_arn
        self.position = position
        self.user_record = user_record
        self._ion: Any = None

    @property
    def ion(self) -> Any:
        """The whole record as exact Ion values (parsed on first use, then cached)."""
        if self._ion is None:
            from amazon.ion import simpleion

            self._ion = simpleion.loads(self.view.buf)
        return self._ion

    @property
    def raw(self) -> bytes:
        """The record's Ion binary bytes, exactly as received."""
        return self.view.buf

    def hash_slot(self, slot: _Slot) -> bytes:
        """Ion hash (SHA-256) of the value at ``slot``."""
        view = self.view
        return ion_hash_at(view.buf, slot[0], slot[1], view.symbols, cache=view.table.serialized)


class ControlRecord(JournalRecord):
    """``CONTROL``: ``CREATED`` (first record of a stream) or ``COMPLETED`` (after the end time)."""

    __slots__ = ("control_record_type",)
    record_type = RecordType.CONTROL

    def __init__(self, view: RecordView, stream_arn: str, position: Position, user_record: UserRecord | None):
        super().__init__(view, stream_arn, position, user_record)
        self.control_record_type = ""

    def __repr__(self) -> str:
        return f"ControlRecord({self.control_record_type})"


class RevisionSummary:
    __slots__ = ("document_id", "hash")

    def __init__(self, hash_: bytes, document_id: str | None) -> None:
        self.hash = hash_
        self.document_id = document_id


class Statement:
    """One PartiQL statement of a block's ``transactionInfo``."""

    __slots__ = ("digest", "slot", "text")

    def __init__(self, text: str, digest: bytes, slot: _Slot) -> None:
        self.text = text
        self.digest = digest
        #: where the statement text is, to hash it as an Ion string
        self.slot = slot


class BlockSummary(JournalRecord):
    """``BLOCK_SUMMARY``: one committed transaction's block (qldb-stream-format.md §3.3)."""

    __slots__ = (
        "block_address",
        "block_hash",
        "block_timestamp_slot",
        "entries_hash",
        "entries_hash_list",
        "previous_block_hash",
        "redaction_info_slot",
        "revision_summaries",
        "statements",
        "transaction_id",
        "transaction_info_slot",
    )
    record_type = RecordType.BLOCK_SUMMARY
    block_address: BlockAddress
    transaction_id: str
    block_hash: bytes
    entries_hash: bytes
    previous_block_hash: bytes
    entries_hash_list: list[bytes]
    revision_summaries: list[RevisionSummary]
    statements: list[Statement]
    transaction_info_slot: _Slot | None
    redaction_info_slot: _Slot | None
    block_timestamp_slot: _Slot

    @property
    def sequence_no(self) -> int:
        return self.block_address.sequence_no

    @property
    def block_timestamp(self) -> Any:
        """Commit time as an amazon-ion ``Timestamp`` (precision and offset kept)."""
        return _timestamp(self.view, self.block_timestamp_slot)

    @property
    def transaction_info(self) -> Any:
        return self.ion["payload"].get("transactionInfo")

    @property
    def redaction_info(self) -> Any:
        return self.ion["payload"].get("redactionInfo")

    def __repr__(self) -> str:
        return f"BlockSummary({self.block_address!r}, {len(self.revision_summaries)} revisions)"


class RevisionDetails(JournalRecord):
    """``REVISION_DETAILS``: one committed document revision (qldb-stream-format.md §3.4).

    ``data`` is absent for a deleted document; a redacted revision carries ``dataHash`` in
    place of ``data``.
    """

    __slots__ = (
        "block_address",
        "data_hash",
        "data_slot",
        "document_id",
        "hash",
        "metadata_slot",
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
    data_slot: _Slot | None
    data_hash: bytes | None
    metadata_slot: _Slot
    document_id: str
    version: int
    tx_id: str
    tx_time_slot: _Slot

    @property
    def is_deleted(self) -> bool:
        return self.data_slot is None and self.data_hash is None

    @property
    def is_redacted(self) -> bool:
        return self.data_hash is not None

    @property
    def data(self) -> Any:
        """The document as exact Ion values (``None`` when deleted or redacted)."""
        if self.data_slot is None:
            return None
        return self.ion["payload"]["revision"]["data"]

    @property
    def metadata(self) -> Any:
        return self.ion["payload"]["revision"]["metadata"]

    @property
    def tx_time(self) -> Any:
        """Commit time of the revision as an amazon-ion ``Timestamp``."""
        return _timestamp(self.view, self.tx_time_slot)

    def __repr__(self) -> str:
        kind = "deleted" if self.is_deleted else "redacted" if self.is_redacted else "live"
        return f"RevisionDetails({self.table_name}/{self.document_id} v{self.version}, {kind})"


def decode(user_record: UserRecord) -> JournalRecord:
    """Decode one user record; raises a :class:`DecodeError` carrying its position."""
    return decode_bytes(user_record.data, user_record.position, user_record)


def decode_bytes(data: bytes, position: Position, user_record: UserRecord | None = None) -> JournalRecord:
    try:
        view = parse_record(data)
        return _decode(view, position, user_record)
    except DecodeError as exc:
        raise exc.with_position(position) from None


def _decode(view: RecordView, position: Position, user_record: UserRecord | None) -> JournalRecord:
    t, ln, start, end = header(view.buf, view.pos, view.end)
    if t != T_STRUCT or ln == 15:
        raise MalformedRecordError("a QLDB stream record must be an Ion struct")
    top = _fields(view, start, end, "record")
    arn = _text(view, top, "qldbStreamArn", "record")
    record_type = _text(view, top, "recordType", "record")
    payload = _struct(view, top, "payload", "record")
    record: JournalRecord
    if record_type == "REVISION_DETAILS":
        record = RevisionDetails(view, arn, position, user_record)
        _revision_details(record, view, payload)
    elif record_type == "BLOCK_SUMMARY":
        record = BlockSummary(view, arn, position, user_record)
        _block_summary(record, view, payload)
    elif record_type == "CONTROL":
        control = ControlRecord(view, arn, position, user_record)
        control.control_record_type = _text(view, payload, "controlRecordType", "payload")
        record = control
    else:
        raise UnknownRecordTypeError(
            f"unknown recordType {record_type!r} (expected CONTROL, BLOCK_SUMMARY or REVISION_DETAILS)"
        )
    return record


def _revision_details(r: RevisionDetails, view: RecordView, payload: dict[str, _Slot]) -> None:
    table = _struct(view, payload, "tableInfo", "payload")
    r.table_name = _text(view, table, "tableName", "tableInfo")
    r.table_id = _text(view, table, "tableId", "tableInfo")
    rev = _struct(view, payload, "revision", "payload")
    r.block_address = _block_address(view, rev, "revision")
    r.hash = _hash(view, rev, "hash", "revision")
    r.data_slot = None
    r.data_hash = None
    if "data" in rev:
        t, ln, _, _ = header(view.buf, rev["data"][0], rev["data"][1])
        if t != T_STRUCT or ln == 15:
            raise MalformedRecordError("revision.data must be a struct")
        r.data_slot = rev["data"]
        if "dataHash" in rev:
            raise MalformedRecordError("revision has both data and dataHash")
    elif "dataHash" in rev:
        r.data_hash = _hash(view, rev, "dataHash", "revision")
    r.metadata_slot = rev.get("metadata") or _missing("metadata", "revision")
    meta = _struct(view, rev, "metadata", "revision")
    r.document_id = _text(view, meta, "id", "revision.metadata")
    r.version = _uint(view, meta, "version", "revision.metadata")
    r.tx_id = _text(view, meta, "txId", "revision.metadata")
    r.tx_time_slot = _typed(view, meta, "txTime", "revision.metadata", T_TIMESTAMP, "a timestamp")


def _block_summary(b: BlockSummary, view: RecordView, payload: dict[str, _Slot]) -> None:
    b.block_address = _block_address(view, payload, "payload")
    b.transaction_id = _text(view, payload, "transactionId", "payload")
    b.block_timestamp_slot = _typed(view, payload, "blockTimestamp", "payload", T_TIMESTAMP, "a timestamp")
    b.block_hash = _hash(view, payload, "blockHash", "payload")
    b.entries_hash = _hash(view, payload, "entriesHash", "payload")
    b.previous_block_hash = _hash(view, payload, "previousBlockHash", "payload", allow_empty=True)
    b.entries_hash_list = [
        _blob32(view, p, e, "entriesHashList[]")
        for p, e in _list(view, payload, "entriesHashList", "payload")
    ]
    summaries = []
    for p, e in _list(view, payload, "revisionSummaries", "payload"):
        s = _as_struct(view, p, e, "revisionSummaries[]")
        doc = _text(view, s, "documentId", "revisionSummaries[]") if "documentId" in s else None
        summaries.append(RevisionSummary(_hash(view, s, "hash", "revisionSummaries[]"), doc))
    b.revision_summaries = summaries
    b.transaction_info_slot = payload.get("transactionInfo")
    b.redaction_info_slot = payload.get("redactionInfo")
    b.statements = []
    if b.transaction_info_slot is not None:
        info = _struct(view, payload, "transactionInfo", "payload")
        if "statements" in info:
            for p, e in _list(view, info, "statements", "transactionInfo"):
                s = _as_struct(view, p, e, "statements[]")
                text_slot = _typed(view, s, "statement", "statements[]", T_STRING, "a string")
                text = _decode_text(view, text_slot)
                b.statements.append(
                    Statement(text, _hash(view, s, "statementDigest", "statements[]"), text_slot)
                )
    if b.redaction_info_slot is not None:
        _struct(view, payload, "redactionInfo", "payload")


# --- typed field access --------------------------------------------------------------------


def _fields(view: RecordView, start: int, end: int, where: str) -> dict[str, _Slot]:
    try:
        out = struct_slots(view.buf, start, end, view.symbols)
    except DuplicateFieldError as exc:
        raise MalformedRecordError(f"{where} has the field {exc.name!r} twice") from None
    if None in out:
        raise MalformedIonError(f"{where} has a field whose name has unknown text")
    return out  # type: ignore[return-value]


def _missing(name: str, where: str) -> Any:
    raise MalformedRecordError(f"{where} has no {name!r} field")


def _typed(view: RecordView, fields: dict[str, _Slot], name: str, where: str, t: int, what: str) -> _Slot:
    slot = fields.get(name) or _missing(name, where)
    vt, ln, _, _ = header(view.buf, slot[0], slot[1])
    if vt != t or ln == 15:
        raise MalformedRecordError(f"{where}.{name} must be {what}")
    return slot


def _decode_text(view: RecordView, slot: _Slot) -> str:
    t, ln, s, e = header(view.buf, slot[0], slot[1])
    if ln == 15:
        raise MalformedRecordError("a text field is null")
    if t == T_STRING:
        try:
            return view.buf[s:e].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedIonError("Ion string is not valid UTF-8") from None
    if t == T_SYMBOL:
        sid = read_uint(view.buf, s, e)
        if sid >= len(view.symbols) or view.symbols[sid] is None:
            raise MalformedIonError(f"Ion symbol ID {sid} has no text")
        return view.symbols[sid]  # type: ignore[return-value]
    raise MalformedRecordError("a text field is not a string")


def _text(view: RecordView, fields: dict[str, _Slot], name: str, where: str) -> str:
    slot = fields.get(name) or _missing(name, where)
    try:
        return _decode_text(view, slot)
    except MalformedRecordError:
        raise MalformedRecordError(f"{where}.{name} must be a string") from None


def _uint(view: RecordView, fields: dict[str, _Slot], name: str, where: str) -> int:
    slot = fields.get(name) or _missing(name, where)
    t, ln, s, e = header(view.buf, slot[0], slot[1])
    if t != T_POSINT or ln == 15:
        raise MalformedRecordError(f"{where}.{name} must be a non-negative int")
    return read_uint(view.buf, s, e)


def _blob32(view: RecordView, p: int, e: int, what: str, allow_empty: bool = False) -> bytes:
    t, ln, s, stop = header(view.buf, p, e)
    if t != T_BLOB or ln == 15:
        raise MalformedRecordError(f"{what} must be a blob")
    n = stop - s
    if n != HASH_LENGTH and not (allow_empty and n == 0):
        raise MalformedRecordError(f"{what} is {n} bytes long; a QLDB hash is {HASH_LENGTH} bytes")
    return view.buf[s:stop]


def _hash(
    view: RecordView, fields: dict[str, _Slot], name: str, where: str, allow_empty: bool = False
) -> bytes:
    slot = fields.get(name) or _missing(name, where)
    return _blob32(view, slot[0], slot[1], f"{where}.{name}", allow_empty)


def _as_struct(view: RecordView, p: int, e: int, what: str) -> dict[str, _Slot]:
    t, ln, s, stop = header(view.buf, p, e)
    if t != T_STRUCT or ln == 15:
        raise MalformedRecordError(f"{what} must be a struct")
    return _fields(view, s, stop, what)


def _struct(view: RecordView, fields: dict[str, _Slot], name: str, where: str) -> dict[str, _Slot]:
    slot = fields.get(name) or _missing(name, where)
    return _as_struct(view, slot[0], slot[1], f"{where}.{name}")


def _list(view: RecordView, fields: dict[str, _Slot], name: str, where: str) -> list[_Slot]:
    slot = fields.get(name) or _missing(name, where)
    t, ln, s, e = header(view.buf, slot[0], slot[1])
    if t != T_LIST or ln == 15:
        raise MalformedRecordError(f"{where}.{name} must be a list")
    return list(iter_list(view.buf, s, e))


def _block_address(view: RecordView, fields: dict[str, _Slot], where: str) -> BlockAddress:
    addr = _struct(view, fields, "blockAddress", where)
    return BlockAddress(
        _text(view, addr, "strandId", f"{where}.blockAddress"),
        _uint(view, addr, "sequenceNo", f"{where}.blockAddress"),
    )


def _timestamp(view: RecordView, slot: _Slot) -> Any:
    _, _, s, e = header(view.buf, slot[0], slot[1])
    return read_timestamp(view.buf, s, e)
