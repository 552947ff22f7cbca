"""Bare journal values - a block as an S3 export holds it, a revision struct as ``history()``,
GetRevision or a block's ``revisions`` hold it - re-wrapped as the stream records the verifier reads.

A journal **block** (``blockAddress``, ``transactionId``, ``blockTimestamp``, ``blockHash``,
``entriesHash``, ``previousBlockHash``, ``entriesHashList``, ``transactionInfo``, ``revisions``,
maybe ``redactionInfo``) becomes a ``BLOCK_SUMMARY`` whose ``revisionSummaries`` are its revisions'
``{hash, documentId}`` (a system revision is ``{hash}`` alone), followed by one
``REVISION_DETAILS`` per user revision, its ``tableInfo`` the table that
``transactionInfo.documents`` names for its document: the same records QLDB streams for that
block, so V2-V8 and the delivery gate apply unchanged (qldb-stream-format.md §3, §5).

A **revision** (``hash``, ``metadata`` {id, version, txTime, txId}, ``data`` or ``dataHash`` or
neither, usually ``blockAddress``) becomes a ``REVISION_DETAILS``. V2 needs only hash, data and
metadata: a revision without ``blockAddress`` gets :data:`~qldbstream.core.report.UNADDRESSED`,
which the report verifies without block cross-references (V3).

Values read from **JSON** are rebuilt as Ion first (:func:`ion_from_json`): hashes and blobs
from base64, ``txTime`` / ``blockTimestamp`` / ``startTime`` as timestamps. Everything else maps
as JSON maps to Ion, so a JSON document whose Ion types were lost (decimals, symbols) fails V2.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from qldbstream.core.errors import InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.core.report import UNADDRESSED

__all__ = [
    "block_records",
    "ion_from_json",
    "is_block",
    "is_revision",
    "is_stream_record",
    "revision_record",
]

_BLOCK_KEYS = frozenset({"blockAddress", "blockHash", "entriesHashList"})
_HASH_FIELDS = frozenset(
    {"hash", "blockHash", "entriesHash", "previousBlockHash", "dataHash", "statementDigest"}
)
_TIME_FIELDS = frozenset({"txTime", "blockTimestamp", "startTime"})


def is_stream_record(value: Any) -> bool:
    """A QLDB stream record (or an attempt at one: its own errors are then per record)."""
    return isinstance(value, Mapping) and bool({"qldbStreamArn", "recordType"} & value.keys())


def is_block(value: Any) -> bool:
    return isinstance(value, Mapping) and value.keys() >= _BLOCK_KEYS


def is_revision(value: Any) -> bool:
    if not isinstance(value, Mapping) or "hash" not in value:
        return False
    metadata = value.get("metadata")
    return isinstance(metadata, Mapping) and "id" in metadata


def _record(payload: Any, record_type: str, source: str) -> KinesisRecord:
    from amazon.ion import simpleion

    record = {"qldbStreamArn": "", "recordType": record_type, "payload": payload}
    return KinesisRecord(simpleion.dumps(record, binary=True), "", source=source)


def revision_record(
    revision: Mapping[str, Any], source: str, table: str = "", table_id: str = ""
) -> KinesisRecord:
    """A revision struct as the ``REVISION_DETAILS`` record QLDB would have streamed."""
    rev = dict(revision)
    if "blockAddress" not in rev:
        rev["blockAddress"] = {"strandId": UNADDRESSED, "sequenceNo": 0}
    return _record(
        {"tableInfo": {"tableName": table, "tableId": table_id}, "revision": rev}, "REVISION_DETAILS", source
    )


def _tables(block: Mapping[str, Any]) -> Mapping[str, Any]:
    """``transactionInfo.documents``: document id -> ``{tableName, tableId}`` ({} when absent)."""
    info = block.get("transactionInfo")
    documents = info.get("documents") if isinstance(info, Mapping) else None
    return documents if isinstance(documents, Mapping) else {}


def _table_of(tables: Mapping[str, Any], revision: Mapping[str, Any]) -> tuple[str, str]:
    entry = tables.get(revision["metadata"]["id"])
    if not isinstance(entry, Mapping):
        return "", ""
    name, table_id = entry.get("tableName"), entry.get("tableId")
    return (name if isinstance(name, str) else "", table_id if isinstance(table_id, str) else "")


def block_records(block: Mapping[str, Any], source: str) -> list[KinesisRecord]:
    """A journal block as its ``BLOCK_SUMMARY`` followed by its user revisions' ``REVISION_DETAILS``."""
    payload = dict(block)
    revisions = payload.pop("revisions", None) or []
    if not isinstance(revisions, list) or not all(isinstance(r, Mapping) and "hash" in r for r in revisions):
        raise InputError(f"{source}: the block's revisions must be a list of structs with a hash")
    payload["revisionSummaries"] = [
        {"hash": r["hash"], **({"documentId": r["metadata"]["id"]} if is_revision(r) else {})}
        for r in revisions
    ]
    records = [_record(payload, "BLOCK_SUMMARY", f"{source} block")]
    tables = _tables(payload)
    records.extend(
        revision_record(r, f"{source} block.revisions[{i}]", *_table_of(tables, r))
        for i, r in enumerate(revisions)
        if is_revision(r)
    )
    return records


def ion_from_json(value: Any, key: str = "") -> Any:
    """A journal value read from JSON, rebuilt as the Ion values QLDB hashed (see the module doc)."""
    if isinstance(value, Mapping):
        return {k: ion_from_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key == "entriesHashList":
            return [_blob(v, key) for v in value]
        return [ion_from_json(v, key if key in _HASH_FIELDS else "") for v in value]
    if key in _HASH_FIELDS and isinstance(value, str):
        return _blob(value, key)
    if key in _TIME_FIELDS and isinstance(value, str):
        return _timestamp(value, key)
    return value


def _blob(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{key} must be a base64 hash in JSON, not {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{key} {value[:20]!r} is not base64 (a QLDB hash in JSON is base64)") from None


def _timestamp(value: str, key: str) -> Any:
    """An ISO 8601 text is an Ion timestamp literal: read it as Ion to keep its precision."""
    from amazon.ion import simpleion
    from amazon.ion.core import Timestamp

    try:
        when = simpleion.loads(value.strip())
    except Exception:  # amazon-ion raises several unrelated exception types
        when = None
    if not isinstance(when, Timestamp):
        raise InputError(f"{key} {value!r} is not an ISO 8601 timestamp")
    return when
