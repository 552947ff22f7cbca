"""Stage 2: decode a user record into a typed QLDB journal record.

Every QLDB stream record is one Ion binary struct ``{qldbStreamArn, recordType, payload}``
(qldb-stream-format.md §3). :func:`scan_record` walks the bytes once: it reads the fields that
routing and verification need, checks their Ion types and, in the same pass, computes the Ion
hashes of the values QLDB hashed (``metadata``, ``data``, ``transactionInfo``, statement texts)
straight from the bytes. It returns a flat tuple - the contract that the compiled extension
(``qldbstream_native``) implements identically; the pure-Python scanner here is the fallback and
the reference.

The document itself is never turned into Python objects here: handlers that read
``revision.data`` get exact Ion values (amazon-ion ``simpleion`` types: timestamps keep
precision and offset, decimals their exponent, symbols stay symbols, typed nulls stay typed),
parsed on first access and cached.

Anything that is not a well-formed QLDB record raises a
:class:`~qldbstream.core.errors.DecodeError` subclass carrying the record's position.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from qldbstream.core.errors import (
    DecodeError,
    IonHashError,
    MalformedIonError,
    MalformedRecordError,
    UnknownRecordTypeError,
)
from qldbstream.core.ion.binary import (
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
    read_varuint,
    struct_slots,
)
from qldbstream.core.ion.check import check_value
from qldbstream.core.ion.hash import ion_hash_at
from qldbstream.core.native import chosen
from qldbstream.core.qldb_hash import HASH_LENGTH, dot, merkle_root
from qldbstream.core.records import Position, UserRecord

__all__ = [
    "UNREADABLE",
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
    "native_available",
    "scan_record",
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
    block_timestamp_slot: _Slot
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
    tx_time_slot: _Slot
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


# --- the scan contract ---------------------------------------------------------------------
#
# scan_record(data) returns one of (hashes are 32-byte ``bytes``, slots ``(pos, end)``):
#
#   ("CONTROL", arn, controlRecordType)
#   ("REVISION_DETAILS", arn, tableName, tableId, strandId, sequenceNo, hash, documentId, version,
#    txId, txTimeSlot, kind, dataHash | None, H(metadata), H(data) | dataHash | None, expected)
#   ("BLOCK_SUMMARY", arn, strandId, sequenceNo, transactionId, blockTimestampSlot, blockHash,
#    entriesHash, previousBlockHash, [entriesHashList...], [(hash, documentId | None)...],
#    [(statement, statementDigest, H(statement))...], H(transactionInfo) | None,
#    H(redactionInfo) | None, summariesRoot | None, entriesRoot, chained)
#
# The last items are what V2 / V4 / V7 / V8 compare against, computed where the hashes already
# are (in the compiled scanner, without a Python object per intermediate hash):
#   expected      dot(H(metadata), content), or H(metadata) for a deleted revision (V2 / V2b)
#   summariesRoot Merkle root of the revisionSummaries hashes, None when there are none (V4)
#   entriesRoot   Merkle root of entriesHashList (V7)
#   chained       dot(entriesHash, previousBlockHash) (V8)
#
# A block sequence number is below 2**64 (the V3 / V9 state keys blocks by it); a larger one is a
# MalformedRecordError. The scan raises MalformedIonError, MalformedRecordError,
# UnknownRecordTypeError or IonHashError.


def scan_record(data: bytes) -> tuple[Any, ...]:
    """Pure-Python scanner (the reference implementation of the scan contract above)."""
    view = parse_record(data)
    scanned = _scan_view(view)
    # last, so that a record's first problem is reported as before: anything amazon-ion would not
    # load to the value just hashed (invalid UTF-8, a minute 112, ...) is malformed Ion
    check_value(view.buf, view.pos, view.end, view.symbols)
    return scanned


def _scan_view(view: RecordView) -> tuple[Any, ...]:
    t, ln, start, end = header(view.buf, view.pos, view.end)
    if t != T_STRUCT or ln == 15:
        raise MalformedRecordError("a QLDB stream record must be an Ion struct")
    top = _fields(view, start, end, "record")
    arn = _text(view, top, "qldbStreamArn", "record")
    record_type = _text(view, top, "recordType", "record")
    payload = _struct(view, top, "payload", "record")
    if record_type == "REVISION_DETAILS":
        return _scan_revision(view, arn, payload)
    if record_type == "BLOCK_SUMMARY":
        return _scan_block(view, arn, payload)
    if record_type == "CONTROL":
        return ("CONTROL", arn, _text(view, payload, "controlRecordType", "payload"))
    raise UnknownRecordTypeError(
        f"unknown recordType {record_type!r} (expected CONTROL, BLOCK_SUMMARY or REVISION_DETAILS)"
    )


def _scan_revision(view: RecordView, arn: str, payload: dict[str, _Slot]) -> tuple[Any, ...]:
    table = _struct(view, payload, "tableInfo", "payload")
    rev = _struct(view, payload, "revision", "payload")
    strand, seq = _block_address(view, rev, "revision")
    rev_hash = _hash(view, rev, "hash", "revision")
    data_hash = None
    if "data" in rev:
        slot = rev["data"]
        t, ln, _, _ = header(view.buf, slot[0], slot[1])
        if t != T_STRUCT or ln == 15:
            raise MalformedRecordError("revision.data must be a struct")
        if "dataHash" in rev:
            raise MalformedRecordError("revision has both data and dataHash")
        kind = LIVE
    elif "dataHash" in rev:
        data_hash = _hash(view, rev, "dataHash", "revision")
        kind = REDACTED
    else:
        kind = DELETED
    meta_slot = rev.get("metadata") or _missing("metadata", "revision")
    meta = _struct(view, rev, "metadata", "revision")
    document_id = _text(view, meta, "id", "revision.metadata")
    version = _uint(view, meta, "version", "revision.metadata")
    tx_id = _text(view, meta, "txId", "revision.metadata")
    tx_time = _typed(view, meta, "txTime", "revision.metadata", T_TIMESTAMP, "a timestamp")
    h_meta = _hash_slot(view, meta_slot)
    content = _hash_slot(view, rev["data"]) if kind == LIVE else data_hash
    return (
        "REVISION_DETAILS",
        arn,
        _text(view, table, "tableName", "tableInfo"),
        _text(view, table, "tableId", "tableInfo"),
        strand,
        seq,
        rev_hash,
        document_id,
        version,
        tx_id,
        tx_time,
        kind,
        data_hash,
        h_meta,
        content,
        h_meta if content is None else dot(h_meta, content),
    )


def _scan_block(view: RecordView, arn: str, payload: dict[str, _Slot]) -> tuple[Any, ...]:
    strand, seq = _block_address(view, payload, "payload")
    transaction_id = _text(view, payload, "transactionId", "payload")
    timestamp = _typed(view, payload, "blockTimestamp", "payload", T_TIMESTAMP, "a timestamp")
    block_hash = _hash(view, payload, "blockHash", "payload")
    entries_hash = _hash(view, payload, "entriesHash", "payload")
    previous = _hash(view, payload, "previousBlockHash", "payload", allow_empty=True)
    entries = [
        _blob32(view, p, e, "entriesHashList[]")
        for p, e in _list(view, payload, "entriesHashList", "payload")
    ]
    summaries = []
    for p, e in _list(view, payload, "revisionSummaries", "payload"):
        s = _as_struct(view, p, e, "revisionSummaries[]")
        doc = _text(view, s, "documentId", "revisionSummaries[]") if "documentId" in s else None
        summaries.append((_hash(view, s, "hash", "revisionSummaries[]"), doc))
    statements = []
    tx_info_hash = None
    if "transactionInfo" in payload:
        info = _struct(view, payload, "transactionInfo", "payload")
        if "statements" in info:
            for p, e in _list(view, info, "statements", "transactionInfo"):
                s = _as_struct(view, p, e, "statements[]")
                text_slot = _typed(view, s, "statement", "statements[]", T_STRING, "a string")
                digest = _hash(view, s, "statementDigest", "statements[]")
                statements.append((_decode_text(view, text_slot), digest, _hash_slot(view, text_slot)))
        tx_info_hash = _hash_slot(view, payload["transactionInfo"])
    redaction_hash = None
    if "redactionInfo" in payload:
        _struct(view, payload, "redactionInfo", "payload")
        redaction_hash = _hash_slot(view, payload["redactionInfo"])
    return (
        "BLOCK_SUMMARY",
        arn,
        strand,
        seq,
        transaction_id,
        timestamp,
        block_hash,
        entries_hash,
        previous,
        entries,
        summaries,
        statements,
        tx_info_hash,
        redaction_hash,
        merkle_root([h for h, _ in summaries]) if summaries else None,
        merkle_root(entries),
        dot(entries_hash, previous),
    )


# --- building records from a scan ----------------------------------------------------------

try:  # the compiled scanner (Rust, qldbstream-native); identical results, ~10x faster
    from qldbstream_native import NativeDecodeError as _NativeError
    from qldbstream_native import scan_record as _native_scan
except ImportError:  # pragma: no cover - depends on the installation
    _native_scan = None
    _NativeError = None

_scan = _native_scan or scan_record
_NATIVE_ERRORS: dict[str, type[DecodeError]] = {
    "ion": MalformedIonError,
    "record": MalformedRecordError,
    "type": UnknownRecordTypeError,
    "hash": IonHashError,
}


def native_available() -> bool:
    return _native_scan is not None


def use_native(enabled: bool) -> None:
    """Switch between the compiled and the pure-Python scanner (tests and benchmarks)."""
    global _scan  # noqa: PLW0603 - one module-level switch, read on the hot path
    _scan = chosen(enabled, _native_scan, scan_record)


def decode(user_record: UserRecord) -> JournalRecord:
    """Decode one user record; raises a :class:`DecodeError` carrying its position."""
    return _decode(user_record.data, None, user_record)


def decode_bytes(data: bytes, position: Position, user_record: UserRecord | None = None) -> JournalRecord:
    return _decode(data, position, user_record)


def _decode(data: bytes, position: Position | None, user_record: UserRecord | None) -> JournalRecord:
    """``position`` may be ``None`` when ``user_record`` is given: it is built only if needed."""
    try:
        s = _scan(data)
    except DecodeError as exc:
        raise exc.with_position(position or user_record.position) from None  # type: ignore[union-attr]
    except Exception as exc:
        if _NativeError is not None and isinstance(exc, _NativeError):
            kind, message = exc.args
            where = position or user_record.position  # type: ignore[union-attr]
            raise _NATIVE_ERRORS[kind](message, where) from None
        raise
    record: JournalRecord
    kind = s[0]
    if kind == "REVISION_DETAILS":
        r = RevisionDetails(data, s[1], position, user_record)
        r.table_name = s[2]
        r.table_id = s[3]
        r.block_address = BlockAddress(s[4], s[5])
        r.hash = s[6]
        r.document_id = s[7]
        r.version = s[8]
        r.tx_id = s[9]
        r.tx_time_slot = s[10]
        r.kind = s[11]
        r.data_hash = s[12]
        r.metadata_hash = s[13]
        r.content_hash = s[14]
        r.expected_hash = s[15]
        record = r
    elif kind == "BLOCK_SUMMARY":
        b = BlockSummary(data, s[1], position, user_record)
        b.block_address = BlockAddress(s[2], s[3])
        b.transaction_id = s[4]
        b.block_timestamp_slot = s[5]
        b.block_hash = s[6]
        b.entries_hash = s[7]
        b.previous_block_hash = s[8]
        b.entries_hash_list = s[9]
        b.summary_entries = s[10]
        b.statement_entries = s[11]
        b._summaries = None
        b._statements = None
        b.transaction_info_hash = s[12]
        b.redaction_info_hash = s[13]
        b.summaries_root = s[14]
        b.entries_root = s[15]
        b.chained_hash = s[16]
        record = b
    else:
        c = ControlRecord(data, s[1], position, user_record)
        c.control_record_type = s[2]
        record = c
    return record


# --- typed field access (pure-Python scanner) ----------------------------------------------


def _hash_slot(view: RecordView, slot: _Slot) -> bytes:
    return ion_hash_at(view.buf, slot[0], slot[1], view.symbols, cache=view.table.serialized)


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
    buf = view.buf
    pos, end = slot
    td = buf[pos]
    t = td >> 4
    if td & 0x0F == 15:
        raise MalformedRecordError("a text field is null")
    body = pos + 1
    if td & 0x0F == 14:
        _, body = read_varuint(buf, body, end)
    if t == T_STRING:
        try:
            return buf[body:end].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedIonError("Ion string is not valid UTF-8") from None
    if t == T_SYMBOL:
        sid = read_uint(buf, body, end)
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


def _block_address(view: RecordView, fields: dict[str, _Slot], where: str) -> tuple[str, int]:
    addr = _struct(view, fields, "blockAddress", where)
    strand = _text(view, addr, "strandId", f"{where}.blockAddress")
    seq = _uint(view, addr, "sequenceNo", f"{where}.blockAddress")
    if seq >> 64:  # (the V3 / V9 state keys blocks by 64-bit sequence numbers)
        raise MalformedRecordError(
            f"{where}.blockAddress.sequenceNo does not fit in 64 bits (a QLDB block sequence number does)"
        )
    return strand, seq


def _timestamp(raw: bytes, slot: _Slot) -> Any:
    _, _, s, e = header(raw, slot[0], slot[1])
    return read_timestamp(raw, s, e)


def block_documents(block: BlockSummary) -> dict[str, tuple[str, str]]:
    """``transactionInfo.documents`` of a block: documentId -> (tableName, tableId).

    The block's hashed statement of which table each document of the transaction belongs to
    (V5 covers it); a revision's own ``tableInfo`` is not hashed, so the delivery gate checks it
    against this map. Read from the block's bytes on demand (one block per transaction).
    Raises :class:`MalformedRecordError` when the map is not of the documented shape.
    """
    view = parse_record(block.raw)
    _, _, start, end = header(view.buf, view.pos, view.end)
    top = _fields(view, start, end, "record")
    payload = _struct(view, top, "payload", "record")
    if "transactionInfo" not in payload:
        return {}
    info = _struct(view, payload, "transactionInfo", "payload")
    if "documents" not in info:
        return {}
    docs = _struct(view, info, "documents", "transactionInfo")
    out: dict[str, tuple[str, str]] = {}
    for document_id, (p, e) in docs.items():
        entry = _as_struct(view, p, e, "transactionInfo.documents[]")
        where = "transactionInfo.documents[]"
        out[document_id] = (_text(view, entry, "tableName", where), _text(view, entry, "tableId", where))
    return out
