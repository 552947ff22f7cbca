"""The pure-Python scanner of a QLDB stream record: the reference for the compiled one.

:func:`scan_record` walks a record's Ion bytes once: it reads the fields that routing and
verification need, checks their Ion types and, in the same pass, computes the Ion hashes of the
values QLDB hashed straight from the bytes. It returns the flat tuple of the scan contract below,
which the compiled extension (``qldbstream_native``) implements identically;
:mod:`qldbstream.core.decode` picks one of the two and builds the typed record from the tuple.
:func:`block_documents` reads a block's ``transactionInfo.documents`` with the same field access.
"""

from __future__ import annotations

from typing import Any

from qldbstream.core.errors import MalformedIonError, MalformedRecordError, UnknownRecordTypeError
from qldbstream.core.ion.binary import (
    T_BLOB,
    T_LIST,
    T_POSINT,
    T_STRING,
    T_STRUCT,
    T_SYMBOL,
    T_TIMESTAMP,
    DuplicateFieldError,
    header,
    iter_list,
    read_uint,
    read_varuint,
    struct_slots,
)
from qldbstream.core.ion.check import check_value
from qldbstream.core.ion.hash import ion_hash_at
from qldbstream.core.ion.symbols import RecordView, parse_record
from qldbstream.core.journal import DELETED, LIVE, REDACTED, BlockSummary, Slot
from qldbstream.core.qldb_hash import HASH_LENGTH, dot, merkle_root

__all__ = ["block_documents", "scan_record"]

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


def _scan_revision(view: RecordView, arn: str, payload: dict[str, Slot]) -> tuple[Any, ...]:
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


def _scan_block(view: RecordView, arn: str, payload: dict[str, Slot]) -> tuple[Any, ...]:
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


# --- typed field access (pure-Python scanner) ----------------------------------------------


def _hash_slot(view: RecordView, slot: Slot) -> bytes:
    return ion_hash_at(view.buf, slot[0], slot[1], view.symbols, cache=view.table.serialized)


def _fields(view: RecordView, start: int, end: int, where: str) -> dict[str, Slot]:
    try:
        out = struct_slots(view.buf, start, end, view.symbols)
    except DuplicateFieldError as exc:
        raise MalformedRecordError(f"{where} has the field {exc.name!r} twice") from None
    if None in out:
        raise MalformedIonError(f"{where} has a field whose name has unknown text")
    return out  # type: ignore[return-value]


def _missing(name: str, where: str) -> Any:
    raise MalformedRecordError(f"{where} has no {name!r} field")


def _typed(view: RecordView, fields: dict[str, Slot], name: str, where: str, t: int, what: str) -> Slot:
    slot = fields.get(name) or _missing(name, where)
    vt, ln, _, _ = header(view.buf, slot[0], slot[1])
    if vt != t or ln == 15:
        raise MalformedRecordError(f"{where}.{name} must be {what}")
    return slot


def _decode_text(view: RecordView, slot: Slot) -> str:
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


def _text(view: RecordView, fields: dict[str, Slot], name: str, where: str) -> str:
    slot = fields.get(name) or _missing(name, where)
    try:
        return _decode_text(view, slot)
    except MalformedRecordError:
        raise MalformedRecordError(f"{where}.{name} must be a string") from None


def _uint(view: RecordView, fields: dict[str, Slot], name: str, where: str) -> int:
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
    view: RecordView, fields: dict[str, Slot], name: str, where: str, allow_empty: bool = False
) -> bytes:
    slot = fields.get(name) or _missing(name, where)
    return _blob32(view, slot[0], slot[1], f"{where}.{name}", allow_empty)


def _as_struct(view: RecordView, p: int, e: int, what: str) -> dict[str, Slot]:
    t, ln, s, stop = header(view.buf, p, e)
    if t != T_STRUCT or ln == 15:
        raise MalformedRecordError(f"{what} must be a struct")
    return _fields(view, s, stop, what)


def _struct(view: RecordView, fields: dict[str, Slot], name: str, where: str) -> dict[str, Slot]:
    slot = fields.get(name) or _missing(name, where)
    return _as_struct(view, slot[0], slot[1], f"{where}.{name}")


def _list(view: RecordView, fields: dict[str, Slot], name: str, where: str) -> list[Slot]:
    slot = fields.get(name) or _missing(name, where)
    t, ln, s, e = header(view.buf, slot[0], slot[1])
    if t != T_LIST or ln == 15:
        raise MalformedRecordError(f"{where}.{name} must be a list")
    return list(iter_list(view.buf, s, e))


def _block_address(view: RecordView, fields: dict[str, Slot], where: str) -> tuple[str, int]:
    addr = _struct(view, fields, "blockAddress", where)
    strand = _text(view, addr, "strandId", f"{where}.blockAddress")
    seq = _uint(view, addr, "sequenceNo", f"{where}.blockAddress")
    if seq >> 64:  # (the V3 / V9 state keys blocks by 64-bit sequence numbers)
        raise MalformedRecordError(
            f"{where}.blockAddress.sequenceNo does not fit in 64 bits (a QLDB block sequence number does)"
        )
    return strand, seq


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
