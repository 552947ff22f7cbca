"""Stage 1: strict KPL deaggregation.

A KPL aggregate is ``F3 89 9A C2`` + protobuf ``AggregatedRecord`` + MD5(protobuf)
(awslabs/amazon-kinesis-producer ``aggregation-format.md``)::

    message AggregatedRecord {
      repeated string partition_key_table     = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records                 = 3;
    }
    message Record {
      required uint64 partition_key_index     = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes  data                    = 3;
      repeated Tag    tags                    = 4;
    }
    message Tag { required string key = 1; optional string value = 2; }

Why our own parser instead of ``aws-kinesis-agg``: that library treats any record whose MD5
does not match, or whose protobuf does not parse, as a plain record and passes it on
unchanged, so a corrupt aggregate reaches the Ion decoder as garbage (or, worse, is silently
accepted). Here a record that carries the magic must be a valid aggregate; anything else is a
:class:`~qldbstream.core.errors.DeaggregationError` with the record's position. A record without
the magic is a plain user record. ``aws-kinesis-agg`` stays in the test suite as the oracle.

The parser is a small hand-written protobuf walker: the schema is tiny and fixed, and this
avoids a protobuf runtime dependency in every Lambda package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from qldbstream.core.errors import DeaggregationError
from qldbstream.core.native import chosen
from qldbstream.core.records import KinesisRecord, UserRecord

__all__ = ["KPL_MAGIC", "deaggregate", "is_aggregate", "native_available", "parse_aggregate", "use_native"]

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
_MD5_LEN = 16
_MIN_AGGREGATE = len(KPL_MAGIC) + _MD5_LEN

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def is_aggregate(data: bytes) -> bool:
    """True when ``data`` starts with the KPL magic (it must then be a valid aggregate)."""
    return data[:4] == KPL_MAGIC


def deaggregate(record: KinesisRecord) -> list[UserRecord]:
    """Return the user records of ``record``: its aggregated sub-records, or itself.

    Raises :class:`DeaggregationError` (with the record's position) when the record carries
    the KPL magic but its MD5 does not match or its protobuf is malformed.
    """
    data = record.data
    if data[:4] != KPL_MAGIC:
        return [
            UserRecord(
                data,
                record.sequence_number,
                record.sub_sequence_number or 0,
                record.partition_key,
                record.explicit_hash_key,
                False,
                record,
            )
        ]
    try:
        entries = _parse(data)
    except DeaggregationError as exc:
        raise exc.with_position(record.position) from None
    except Exception as exc:
        if _NativeError is not None and isinstance(exc, _NativeError):
            raise DeaggregationError(exc.args[1], record.position) from None
        raise
    seq = record.sequence_number
    return [
        UserRecord(payload, seq, i, pk, ehk, True, record) for i, (pk, ehk, payload) in enumerate(entries)
    ]


def parse_aggregate(data: bytes) -> list[tuple[str, str | None, bytes]]:
    """Parse a KPL aggregate into ``(partition_key, explicit_hash_key, data)`` triples."""
    if len(data) < _MIN_AGGREGATE:
        raise DeaggregationError(
            f"record starts with the KPL magic but is only {len(data)} bytes long "
            f"(an aggregate needs at least {_MIN_AGGREGATE})"
        )
    body = memoryview(data)[4:-_MD5_LEN]
    if hashlib.md5(body).digest() != data[-_MD5_LEN:]:  # noqa: S324 - the KPL format's checksum
        raise DeaggregationError("KPL aggregate MD5 does not match its protobuf (corrupt or truncated)")
    buf = bytes(body)
    end = len(buf)
    pk_table: list[str] = []
    ehk_table: list[str] = []
    raw_records: list[tuple[int, int]] = []
    pos = 0
    while pos < end:
        fnum, wtype, pos = _key(buf, pos, end)
        if fnum in (1, 2, 3):
            if wtype != _LEN:
                raise DeaggregationError(f"AggregatedRecord field {fnum} has wire type {wtype}, expected 2")
            n, pos = _varint(buf, pos, end)
            stop = pos + n
            if stop > end:
                raise DeaggregationError(f"AggregatedRecord field {fnum} runs past the end of the protobuf")
            if fnum == 3:
                raw_records.append((pos, stop))
            else:
                (pk_table if fnum == 1 else ehk_table).append(_utf8(buf, pos, stop, fnum))
            pos = stop
        else:
            pos = _skip(buf, pos, end, wtype)
    out: list[tuple[str, str | None, bytes]] = []
    for index, (start, stop) in enumerate(raw_records):
        pk_index, ehk_index, payload = _parse_record(buf, start, stop, index)
        if pk_index >= len(pk_table):
            raise DeaggregationError(
                f"user record {index}: partition_key_index {pk_index} is outside the table "
                f"of {len(pk_table)} partition keys"
            )
        ehk: str | None = None
        if ehk_index is not None:
            if ehk_index >= len(ehk_table):
                raise DeaggregationError(
                    f"user record {index}: explicit_hash_key_index {ehk_index} is outside the table "
                    f"of {len(ehk_table)} explicit hash keys"
                )
            ehk = ehk_table[ehk_index]
        out.append((pk_table[pk_index], ehk, payload))
    return out


# --- the compiled parser ---------------------------------------------------------------------

try:  # qldbstream-native (Rust): identical results and messages, NativeDecodeError("kpl", message)
    from qldbstream_native import NativeDecodeError as _NativeError
    from qldbstream_native import parse_aggregate as _native_parse
except ImportError:  # pragma: no cover - depends on the installation
    _native_parse = None
    _NativeError = None

_parse: Callable[[bytes], list[tuple[str, str | None, bytes]]] = _native_parse or parse_aggregate


def native_available() -> bool:
    return _native_parse is not None


def use_native(enabled: bool) -> None:
    """Switch between the compiled and the pure-Python KPL parser (tests and benchmarks)."""
    global _parse  # noqa: PLW0603 - one module-level switch, read on the hot path
    _parse = chosen(enabled, _native_parse, parse_aggregate)


# --- protobuf walking (pure-Python parser) ---------------------------------------------------


def _parse_record(buf: bytes, pos: int, end: int, index: int) -> tuple[int, int | None, bytes]:
    pk_index: int | None = None
    ehk_index: int | None = None
    payload: bytes | None = None
    while pos < end:
        fnum, wtype, pos = _key(buf, pos, end)
        if fnum in (1, 2):
            if wtype != _VARINT:
                raise DeaggregationError(
                    f"user record {index}: field {fnum} has wire type {wtype}, expected 0"
                )
            value, pos = _varint(buf, pos, end)
            if fnum == 1:
                pk_index = value
            else:
                ehk_index = value
        elif fnum in (3, 4):
            if wtype != _LEN:
                raise DeaggregationError(
                    f"user record {index}: field {fnum} has wire type {wtype}, expected 2"
                )
            n, pos = _varint(buf, pos, end)
            stop = pos + n
            if stop > end:
                raise DeaggregationError(f"user record {index}: field {fnum} runs past the end of the record")
            if fnum == 3:
                payload = buf[pos:stop]
            else:
                _check_tag(buf, pos, stop, index)
            pos = stop
        else:
            pos = _skip(buf, pos, end, wtype)
    if pk_index is None:
        raise DeaggregationError(f"user record {index}: the required partition_key_index is missing")
    if payload is None:
        raise DeaggregationError(f"user record {index}: the required data field is missing")
    return pk_index, ehk_index, payload


def _check_tag(buf: bytes, pos: int, end: int, index: int) -> None:
    has_key = False
    while pos < end:
        fnum, wtype, pos = _key(buf, pos, end)
        if fnum in (1, 2) and wtype == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise DeaggregationError(f"user record {index}: a tag runs past the end of the record")
            _utf8(buf, pos, pos + n, 4)
            has_key = has_key or fnum == 1
            pos += n
        else:
            pos = _skip(buf, pos, end, wtype)
    if not has_key:
        raise DeaggregationError(f"user record {index}: a tag has no key")


def _utf8(buf: bytes, start: int, stop: int, fnum: int) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise DeaggregationError(f"protobuf string field {fnum} is not valid UTF-8") from None


def _key(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    key, pos = _varint(buf, pos, end)
    if key >> 3 == 0:
        raise DeaggregationError("protobuf has a field with number 0")
    return key >> 3, key & 7, pos


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise DeaggregationError("protobuf is truncated (a varint runs past the end)")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise DeaggregationError("protobuf is truncated (a varint runs past the end)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                raise DeaggregationError("protobuf varint does not fit in 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise DeaggregationError("protobuf varint is longer than 10 bytes")


def _skip(buf: bytes, pos: int, end: int, wtype: int) -> int:
    """Skip an unknown field (protobuf allows them); groups and reserved wire types are errors."""
    if wtype == _VARINT:
        return _varint(buf, pos, end)[1]
    if wtype == _LEN:
        n, pos = _varint(buf, pos, end)
        width = n
    elif wtype == _I64:
        width = 8
    elif wtype == _I32:
        width = 4
    else:
        raise DeaggregationError(f"protobuf has unsupported wire type {wtype}")
    if pos + width > end:
        raise DeaggregationError("protobuf is truncated (a field runs past the end)")
    return pos + width
