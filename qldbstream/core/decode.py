"""Stage 2: decode a user record into a typed QLDB journal record.

Every QLDB stream record is one Ion binary struct ``{qldbStreamArn, recordType, payload}``
(qldb-stream-format.md §3). A scan walks the bytes once: it reads the fields that routing and
verification need, checks their Ion types and, in the same pass, computes the Ion hashes of the
values QLDB hashed (``metadata``, ``data``, ``transactionInfo``, statement texts) straight from
the bytes. It returns a flat tuple - the contract that the compiled extension
(``qldbstream_native``) implements identically; the pure-Python scanner
(:func:`qldbstream.core.scan.scan_record`) is the fallback and the reference. This module picks
one of the two and builds the typed record (:mod:`qldbstream.core.journal`) from the tuple.

The document itself is never turned into Python objects here: handlers that read
``revision.data`` get exact Ion values (amazon-ion ``simpleion`` types: timestamps keep
precision and offset, decimals their exponent, symbols stay symbols, typed nulls stay typed),
parsed on first access and cached.

Anything that is not a well-formed QLDB record raises a
:class:`~qldbstream.core.errors.DecodeError` subclass carrying the record's position.

The record types live in :mod:`qldbstream.core.journal`; they are re-exported here (in
``__all__``) because this stage is where they come from and plugins, the handlers distribution
and :mod:`qldbstream.api` import them from here.
"""

from __future__ import annotations

from qldbstream.core.errors import (
    DecodeError,
    IonHashError,
    MalformedIonError,
    MalformedRecordError,
    UnknownRecordTypeError,
)
from qldbstream.core.journal import (
    UNREADABLE,
    BlockAddress,
    BlockSummary,
    ControlRecord,
    JournalRecord,
    RecordType,
    RevisionDetails,
    RevisionSummary,
    Statement,
)
from qldbstream.core.native import chosen
from qldbstream.core.records import Position, UserRecord
from qldbstream.core.scan import scan_record

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
]


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
