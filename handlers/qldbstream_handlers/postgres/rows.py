"""One revision as a table row, and a row back to the revision's hash.

A row keeps what QLDB hashed: ``metadata`` is rebuilt from ``document_id``, ``version``,
``tx_time_ion`` (the exact Ion timestamp; ``tx_time`` is the same instant as ``timestamptz``, for
queries) and ``tx_id``; the document from ``data`` through the reverse mapping. So
:func:`revision_hash` recomputes QLDB's revision hash (qldb-stream-format.md §4-§5, V2/V2b):

* live: ``dot(H(metadata), H(data))``;
* redacted: ``dot(H(metadata), data_hash)``;
* deleted: ``H(metadata)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from amazon.ion.core import IonType
from amazon.ion.simple_types import IonPyDict, IonPyInt, IonPyText, IonPyTimestamp
from psycopg.types.json import Jsonb

from qldbstream.api import RevisionDetails, dot, ion_hash
from qldbstream_handlers.postgres.mapping import from_jsonb, to_jsonb

__all__ = ["LIVE", "Row", "metadata_of", "revision_hash", "row_of", "tx_time_text"]

LIVE, DELETED, REDACTED = "live", "deleted", "redacted"

#: The values of :data:`~.schema.COLUMNS`, in order.
Row = tuple[Any, ...]


def tx_time_text(tx_time: Any) -> str:
    """The exact Ion text of a timestamp (precision, fraction digits, offset)."""
    text = to_jsonb(tx_time)["v"]
    assert isinstance(text, str)
    return text


def _instant(tx_time: Any) -> datetime:
    """The ``timestamptz`` of an Ion timestamp (an unknown offset is UTC, as Ion defines it)."""
    return datetime(
        tx_time.year,
        tx_time.month,
        tx_time.day,
        tx_time.hour,
        tx_time.minute,
        tx_time.second,
        tx_time.microsecond,
        tzinfo=tx_time.tzinfo or UTC,
    )


def row_of(r: RevisionDetails) -> Row:
    """The table row of a revision (raises :class:`~.mapping.MappingError` for unmappable data)."""
    if r.is_deleted:
        status, data, data_hash = DELETED, None, None
    elif r.is_redacted:
        status, data, data_hash = REDACTED, None, r.data_hash
    else:
        status, data, data_hash = LIVE, Jsonb(to_jsonb(r.data)), None
    tx_time = r.tx_time
    address = r.block_address
    return (
        r.document_id,
        r.version,
        r.table_id,
        r.tx_id,
        _instant(tx_time),
        tx_time_text(tx_time),
        address.strand_id,
        address.sequence_no,
        r.hash,
        status,
        data,
        data_hash,
    )


def metadata_of(document_id: str, version: int, tx_time_ion: str, tx_id: str) -> Any:
    """The revision's ``metadata`` struct as QLDB wrote it: ``{id, version, txTime, txId}``."""
    tx_time = from_jsonb({"$ion": "timestamp", "v": tx_time_ion})
    metadata = IonPyDict.from_value(IonType.STRUCT, {})
    metadata.add_item("id", IonPyText.from_value(IonType.STRING, document_id))
    metadata.add_item("version", IonPyInt.from_value(IonType.INT, version))
    metadata.add_item("txTime", IonPyTimestamp.from_value(IonType.TIMESTAMP, tx_time))
    metadata.add_item("txId", IonPyText.from_value(IonType.STRING, tx_id))
    return metadata


def revision_hash(
    document_id: str,
    version: int,
    tx_time_ion: str,
    tx_id: str,
    status: str,
    data: Any,
    data_hash: bytes | None,
) -> bytes:
    """QLDB's revision hash recomputed from a row's columns (``data`` is the stored JSON)."""
    meta = ion_hash(metadata_of(document_id, version, tx_time_ion, tx_id))
    if status == DELETED:
        return meta
    if status == REDACTED:
        if data_hash is None:
            raise ValueError("a redacted row without data_hash")
        return dot(meta, bytes(data_hash))
    return dot(meta, ion_hash(from_jsonb(data)))
