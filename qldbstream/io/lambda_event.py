"""Kinesis records out of a Lambda Kinesis event (``{"Records": [{"kinesis": {...}, ...}]}``)."""

from __future__ import annotations

import binascii
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from qldbstream.core.errors import MalformedKinesisRecordError
from qldbstream.core.native import chosen, register
from qldbstream.core.records import KinesisRecord, Position

__all__ = ["kinesis_record", "native_available", "records_from_event", "shard_id_of", "use_native"]

try:  # qldbstream-native: the well-formed records of an event in one call (SIMD base64 included)
    from qldbstream_native import lambda_records as _native_records
except ImportError:  # pragma: no cover - depends on the installation (or an older extension)
    _native_records = None

_records: Callable[[list[Any], str, type[KinesisRecord]], list[KinesisRecord | None]] | None = _native_records


def native_available() -> bool:
    return _native_records is not None


def use_native(enabled: bool) -> None:
    """Switch between the compiled and the pure-Python event reading (tests and benchmarks)."""
    global _records  # noqa: PLW0603 - one module-level switch, read on the hot path
    _records = chosen(enabled, _native_records, None)


register(sys.modules[__name__])  # on the one switch (qldbstream.core.native.use)


def shard_id_of(event_id: str | None) -> str | None:
    """``eventID`` is ``shardId-000000000000:<sequenceNumber>``; return the shard part."""
    if not event_id or ":" not in event_id:
        return None
    return event_id.split(":", 1)[0]


def kinesis_record(entry: Mapping[str, Any], source: str) -> KinesisRecord:
    """One ``Records[i]`` entry of a Lambda event; raises :class:`MalformedKinesisRecordError`."""
    kinesis = entry.get("kinesis")
    # `type(...) is dict` first: a Lambda event is parsed JSON, and the ABC check costs ~0.5 us
    if type(kinesis) is not dict and not isinstance(kinesis, Mapping):
        raise MalformedKinesisRecordError("event record has no 'kinesis' object", Position(source))
    seq = kinesis.get("sequenceNumber")
    event_id = entry.get("eventID")
    if type(event_id) is str and ":" in event_id:  # shard_id_of(), inlined: once per record
        shard: str | None = event_id.partition(":")[0]
    else:
        shard = shard_id_of(event_id)
    # The Position is built only for an error: KinesisRecord.position gives it otherwise.
    if not isinstance(seq, str) or not seq:
        where = Position(source, shard, seq if isinstance(seq, str) else None)
        raise MalformedKinesisRecordError("event record has no sequenceNumber", where)
    data = kinesis.get("data")
    if not isinstance(data, str):
        raise MalformedKinesisRecordError("event record has no base64 'data'", Position(source, shard, seq))
    try:
        # what base64.b64decode(data, validate=True) does, minus its wrapper and str.encode, and
        # stricter (no excess data after the padding). The compiled reader decodes canonical
        # base64 only and leaves the rest (non-zero bits after the last symbol) to this line.
        raw = binascii.a2b_base64(data, strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise MalformedKinesisRecordError(
            "event record 'data' is not valid base64 (truncated?)", Position(source, shard, seq)
        ) from None
    arrival = kinesis.get("approximateArrivalTimestamp")
    if type(arrival) is not float:
        arrival = float(arrival) if isinstance(arrival, (int, float)) else None
    partition_key = kinesis.get("partitionKey")
    if type(partition_key) is not str:
        partition_key = str(partition_key or "")
    return KinesisRecord(  # positional: one per record, and keywords cost ~30% more
        raw,
        seq,
        partition_key,
        shard,
        arrival,
        kinesis.get("explicitHashKey") or None,
        entry.get("eventSourceARN"),
        source,
    )


def records_from_event(
    event: Mapping[str, Any], source: str = "lambda event"
) -> Iterator[KinesisRecord | MalformedKinesisRecordError]:
    """Yield each record of the event, or the error that makes it unreadable, in order."""
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedKinesisRecordError("not a Lambda Kinesis event: no 'Records' list", Position(source))
    if _records is not None:  # the compiled reader: None where this code must look at the entry
        for i, record in enumerate(_records(records, source, KinesisRecord)):
            yield record if record is not None else _entry(records[i], f"{source} Records[{i}]")
        return
    for i, entry in enumerate(records):
        yield _entry(entry, f"{source} Records[{i}]")


def _entry(entry: Any, where: str) -> KinesisRecord | MalformedKinesisRecordError:
    try:
        if type(entry) is not dict and not isinstance(entry, Mapping):
            raise MalformedKinesisRecordError("event record is not an object", Position(where))
        return kinesis_record(entry, where)
    except MalformedKinesisRecordError as exc:
        return exc
