"""The export's row: one revision, its identity, its commit, its data (Ion text and JSON), its hashes.

======================  ========================  ================================================
column                  type                      value
======================  ========================  ================================================
ledger_stream_arn       string                    ``qldbStreamArn``
table_name, table_id    string                    ``tableInfo``
document_id             string                    ``metadata.id``
version                 int64                     ``metadata.version``
operation               string                    insert (v0), update, delete, redacted
tx_id                   string                    ``metadata.txId``
tx_time                 timestamp[ms, UTC]        ``metadata.txTime`` (QLDB keeps milliseconds)
block_strand_id         string                    ``blockAddress.strandId``
block_sequence_no       int64                     ``blockAddress.sequenceNo``
data_ion                string (nullable)         the document as Ion text: lossless (null when
                                                  deleted or redacted)
data_json               string (nullable)         the document as JSON (see :func:`to_json`)
data_hash               binary (nullable)         ``dataHash`` of a redacted revision
revision_hash           binary (32 bytes)         ``revision.hash``
is_deleted, is_redacted bool
verified                bool                      the revision hash recomputed from metadata and
                                                  data (or dataHash) matches
shard_id                string                    the Kinesis shard it was read from
sequence_number         string                    Kinesis sequence number (56 digits: not int64)
sub_sequence_number     int64                     position inside a KPL aggregate (0 when none)
======================  ========================  ================================================

The Parquet files also carry the partition columns in their path (``year=2024/``), not as columns.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from qldbstream.api import RevisionDetails, dot, operation_of

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["COLUMNS", "Position", "RenderError", "arrow_schema", "position_of", "revision_row", "to_json"]

#: A record's place in its shard: (sequence number as an int, sub-sequence number).
Position = tuple[int, int]

COLUMNS = (
    "ledger_stream_arn",
    "table_name",
    "table_id",
    "document_id",
    "version",
    "operation",
    "tx_id",
    "tx_time",
    "block_strand_id",
    "block_sequence_no",
    "data_ion",
    "data_json",
    "data_hash",
    "revision_hash",
    "is_deleted",
    "is_redacted",
    "verified",
    "shard_id",
    "sequence_number",
    "sub_sequence_number",
)


class RenderError(Exception):
    """The revision's data cannot be written (it goes to the error prefix with this reason)."""


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    fields: list[pa.Field[Any]] = [
        pa.field("ledger_stream_arn", s, nullable=False),
        pa.field("table_name", s, nullable=False),
        pa.field("table_id", s, nullable=False),
        pa.field("document_id", s, nullable=False),
        pa.field("version", i, nullable=False),
        pa.field("operation", s, nullable=False),
        pa.field("tx_id", s, nullable=False),
        pa.field("tx_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("block_strand_id", s, nullable=False),
        pa.field("block_sequence_no", i, nullable=False),
        pa.field("data_ion", s),
        pa.field("data_json", s),
        pa.field("data_hash", pa.binary()),
        pa.field("revision_hash", pa.binary(), nullable=False),
        pa.field("is_deleted", pa.bool_(), nullable=False),
        pa.field("is_redacted", pa.bool_(), nullable=False),
        pa.field("verified", pa.bool_(), nullable=False),
        pa.field("shard_id", s, nullable=False),
        pa.field("sequence_number", s, nullable=False),
        pa.field("sub_sequence_number", i, nullable=False),
    ]
    return pa.schema(fields)


def position_of(record: RevisionDetails) -> Position:
    p = record.position
    return (int(p.sequence_number or 0), p.sub_sequence_number or 0)


def tx_time_utc(record: RevisionDetails) -> datetime:
    """``txTime`` as an aware UTC datetime truncated to milliseconds (an unknown offset is UTC)."""
    ts = record.tx_time
    moment = datetime(
        ts.year,
        ts.month,
        ts.day,
        ts.hour,
        ts.minute,
        ts.second,
        ts.microsecond // 1000 * 1000,
        ts.tzinfo or UTC,
    )
    return moment.astimezone(UTC)


def _ion_text(value: Any) -> str:
    from amazon.ion import simpleion

    text: str = simpleion.dumps(value, binary=False)
    return text.removeprefix("$ion_1_0 ")


def to_json(value: Any, path: str = "data") -> str:
    """JSON text of an Ion value: struct → object, list/sexp → array, string/symbol → string,
    int/decimal → number (exact digits), finite float → number, bool, null (typed too) → null,
    timestamp → string (its Ion text), blob/clob → base64 string. Annotations are dropped.

    Raises :class:`RenderError` for what JSON cannot hold: NaN or infinite floats, symbols
    without text.
    """
    ion_type = getattr(value, "ion_type", None)
    name = type(value).__name__
    if value is None or name == "IonPyNull":
        return "null"
    if isinstance(value, bool) or (ion_type is not None and ion_type.name == "BOOL"):
        return "true" if value else "false"
    if name == "IonPySymbol" or (ion_type is not None and ion_type.name == "SYMBOL"):
        text = getattr(value, "text", None)
        if text is None:
            raise RenderError(f"{path}: a symbol without text has no JSON form")
        return json.dumps(str(text))
    if isinstance(value, str):
        return json.dumps(str(value))
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        return str(Decimal(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"{path}: the float {value!r} has no JSON form")
        return repr(float(value))
    if isinstance(value, datetime):
        return json.dumps(_ion_text(value))
    if isinstance(value, bytes | bytearray):
        return json.dumps(base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}:{to_json(v, f'{path}.{k}')}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(v, f"{path}[{n}]") for n, v in enumerate(value)) + "]"
    raise RenderError(f"{path}: {type(value).__name__} has no JSON form")


def _verified(r: RevisionDetails) -> bool:
    """V2/V2b on this revision alone: its hash from H(metadata) and H(data) or dataHash."""
    if r.content_hash is not None:
        return dot(r.metadata_hash, r.content_hash) == r.hash
    return r.metadata_hash == r.hash


def revision_row(r: RevisionDetails, *, json_column: bool = True) -> dict[str, Any]:
    """The row for ``r``; raises :class:`RenderError` when its data cannot be rendered."""
    data_ion = data_json = None
    if not r.is_deleted and not r.is_redacted:
        try:
            data = r.data
            data_ion = _ion_text(data)
        except Exception as exc:  # amazon-ion could not read or write it: the reason is kept
            raise RenderError(f"data: not renderable as Ion text ({exc!r})") from exc
        data_json = to_json(data) if json_column else None
    p = r.position
    return {
        "ledger_stream_arn": r.stream_arn,
        "table_name": r.table_name,
        "table_id": r.table_id,
        "document_id": r.document_id,
        "version": r.version,
        "operation": operation_of(r),
        "tx_id": r.tx_id,
        "tx_time": tx_time_utc(r),
        "block_strand_id": r.block_address.strand_id,
        "block_sequence_no": r.block_address.sequence_no,
        "data_ion": data_ion,
        "data_json": data_json,
        "data_hash": r.data_hash,
        "revision_hash": r.hash,
        "is_deleted": r.is_deleted,
        "is_redacted": r.is_redacted,
        "verified": _verified(r),
        "shard_id": p.shard_id or "",
        "sequence_number": p.sequence_number or "",
        "sub_sequence_number": p.sub_sequence_number or 0,
    }
