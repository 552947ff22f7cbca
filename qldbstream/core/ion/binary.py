"""A minimal Ion 1.0 binary reader: exactly what decode and hash-from-bytes need.

Why not amazon-ion's reader here: QLDB records are small binary Ion streams and every record
pays for its parsing, so the hot path walks the bytes directly - locating fields, reading the
few scalars routing needs, and leaving everything else (the document ``data``) as an unparsed
byte range that :mod:`qldbstream.core.ion.hash` hashes straight from the bytes and amazon-ion parses
only when a handler asks for the values.

The symbol tables and the record's top level (:func:`~qldbstream.core.ion.symbols.parse_record`)
are in :mod:`qldbstream.core.ion.symbols`.

Positions are offsets of a value's type descriptor in the record's bytes. Every function raises
:class:`~qldbstream.core.errors.MalformedIonError` on malformed input and never reads past the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from qldbstream.core.errors import MalformedIonError

__all__ = [
    "IVM",
    "Symbols",
    "header",
    "iter_list",
    "iter_struct",
    "read_decimal",
    "read_int",
    "read_timestamp",
    "read_uint",
    "read_varint",
    "read_varuint",
    "struct_slots",
]

IVM = b"\xe0\x01\x00\xea"
#: A symbol table: texts by symbol ID (``None``: the text is unknown).
Symbols = Sequence[str | None]

# type codes
T_NULL, T_BOOL, T_POSINT, T_NEGINT, T_FLOAT, T_DECIMAL, T_TIMESTAMP, T_SYMBOL = range(8)
T_STRING, T_CLOB, T_BLOB, T_LIST, T_SEXP, T_STRUCT, T_ANNOTATION = range(8, 15)


def read_varuint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read an Ion VarUInt at ``pos``; return ``(value, next_pos)``."""
    value = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if b & 0x80:
            return value, pos
    raise MalformedIonError("Ion VarUInt runs past the end of its value")


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, bool, int]:
    """Read an Ion VarInt; return ``(magnitude_signed, is_negative, next_pos)``.

    ``is_negative`` is returned separately so that negative zero (``0xC0``) can be told apart.
    """
    if pos >= end:
        raise MalformedIonError("Ion VarInt runs past the end of its value")
    b = buf[pos]
    pos += 1
    negative = bool(b & 0x40)
    value = b & 0x3F
    while not b & 0x80:
        if pos >= end:
            raise MalformedIonError("Ion VarInt runs past the end of its value")
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
    return (-value if negative else value), negative, pos


def read_uint(buf: bytes, start: int, end: int) -> int:
    return int.from_bytes(buf[start:end], "big")


def read_int(buf: bytes, start: int, end: int) -> tuple[int, bool]:
    """Read an Ion Int (sign-magnitude) subfield; return ``(value, is_negative)``."""
    if start >= end:
        return 0, False
    first = buf[start]
    negative = bool(first & 0x80)
    magnitude = int.from_bytes(bytes([first & 0x7F]) + buf[start + 1 : end], "big")
    return (-magnitude if negative else magnitude), negative


def header(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Decode the value header at ``pos``: ``(type_code, low_nibble, body_start, body_end)``.

    ``low_nibble`` is 15 for a null of that type. For bool, the body is empty and the nibble is
    the value. Annotation wrappers are returned as such (type 14).
    """
    if pos >= end:
        raise MalformedIonError("Ion value expected but the data ended")
    td = buf[pos]
    t = td >> 4
    ln = td & 0x0F
    pos += 1
    if ln == 15:
        if t == T_ANNOTATION or t == 15:
            raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
        return t, 15, pos, pos
    if t == T_BOOL:
        if ln > 1:
            raise MalformedIonError(f"invalid Ion bool type descriptor 0x{td:02x}")
        return t, ln, pos, pos
    if t == 15:
        raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
    if ln == 14 or (t == T_STRUCT and ln == 1):
        length, pos = read_varuint(buf, pos, end)
    else:
        length = ln
    stop = pos + length
    if stop > end:
        raise MalformedIonError("Ion value is truncated (its length runs past the end of its container)")
    return t, ln, pos, stop


def symbol_text(symbols: Symbols, sid: int) -> str | None:
    if sid >= len(symbols):
        raise MalformedIonError(f"Ion symbol ID {sid} is not in the symbol table (max ID {len(symbols) - 1})")
    return symbols[sid]


def iter_struct(
    buf: bytes, start: int, end: int, symbols: Symbols
) -> Iterator[tuple[int, str | None, int, int]]:
    """Iterate a struct body: ``(sid, name, value_pos, value_end)``, NOP padding skipped."""
    pos = start
    while pos < end:
        sid, pos = read_varuint(buf, pos, end)
        t, ln, _, stop = header(buf, pos, end)
        if t == T_NULL and ln != 15:  # NOP padding (any field name)
            pos = stop
            continue
        yield sid, symbol_text(symbols, sid), pos, stop
        pos = stop


def struct_slots(buf: bytes, start: int, end: int, symbols: Symbols) -> dict[str | None, tuple[int, int]]:
    """Map each field name of a struct body to ``(value_pos, value_end)``; NOP padding skipped.

    A name whose text is unknown maps as ``None``; a name that appears twice raises
    :class:`DuplicateFieldError`. Value headers are decoded inline: this runs for every struct
    of every record.
    """
    out: dict[str | None, tuple[int, int]] = {}
    pos = start
    nsym = len(symbols)
    while pos < end:
        sid = 0
        while True:
            b = buf[pos]
            pos += 1
            sid = (sid << 7) | (b & 0x7F)
            if b & 0x80:
                break
            if pos >= end:
                raise MalformedIonError("Ion field name runs past the end of its struct")
        if pos >= end:
            raise MalformedIonError("Ion struct field has a name but no value")
        vpos = pos
        td = buf[pos]
        pos += 1
        ln = td & 0x0F
        t = td >> 4
        if ln == 14 or (ln == 1 and t == T_STRUCT):
            length = 0
            while True:
                if pos >= end:
                    raise MalformedIonError("Ion VarUInt runs past the end of its value")
                b = buf[pos]
                pos += 1
                length = (length << 7) | (b & 0x7F)
                if b & 0x80:
                    break
        elif ln == 15 or t == T_BOOL:
            length = 0
        else:
            length = ln
        if t == 15 or (t == T_ANNOTATION and ln == 15):
            raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
        pos += length
        if pos > end:
            raise MalformedIonError("Ion value is truncated (its length runs past the end of its container)")
        if td < 0x0F:  # NOP padding
            continue
        if sid >= nsym:
            raise MalformedIonError(f"Ion symbol ID {sid} is not in the symbol table (max ID {nsym - 1})")
        name = symbols[sid]
        if name in out:
            raise DuplicateFieldError(name)
        out[name] = (vpos, pos)
    return out


class DuplicateFieldError(MalformedIonError):
    """A struct has the same field name twice where a record's schema needs it once."""

    def __init__(self, name: str | None) -> None:
        super().__init__(f"the field {name!r} appears twice")
        self.name = name


def iter_list(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """A list/sexp body's values as ``(value_pos, value_end)``, NOP padding skipped.

    Value headers are decoded inline (this runs for every list of every record).
    """
    out = []
    pos = start
    while pos < end:
        vpos = pos
        td = buf[pos]
        pos += 1
        ln = td & 0x0F
        t = td >> 4
        if t == 15 or (t == T_ANNOTATION and ln == 15):
            raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
        if ln == 14 or (ln == 1 and t == T_STRUCT):
            length = 0
            while True:
                if pos >= end:
                    raise MalformedIonError("Ion VarUInt runs past the end of its value")
                b = buf[pos]
                pos += 1
                length = (length << 7) | (b & 0x7F)
                if b & 0x80:
                    break
        elif ln == 15 or t == T_BOOL:
            length = 0
        else:
            length = ln
        pos += length
        if pos > end:
            raise MalformedIonError("Ion value is truncated (its length runs past the end of its container)")
        if td >= 0x0F:  # not NOP padding
            out.append((vpos, pos))
    return out


def unwrap(buf: bytes, pos: int, end: int) -> tuple[list[int], int, int, int, int, int]:
    """Look through an annotation wrapper: ``(annotation_sids, pos, t, ln, body_start, body_end)``."""
    t, ln, bstart, bend = header(buf, pos, end)
    if t != T_ANNOTATION:
        return [], pos, t, ln, bstart, bend
    alen, p = read_varuint(buf, bstart, bend)
    aend = p + alen
    if alen == 0 or aend >= bend:
        raise MalformedIonError("Ion annotation wrapper has no annotations or no value")
    sids = []
    while p < aend:
        sid, p = read_varuint(buf, p, aend)
        sids.append(sid)
    t, ln, vstart, vend = header(buf, aend, bend)
    if t == T_ANNOTATION or (t == T_NULL and ln != 15):
        raise MalformedIonError("Ion annotation wrapper must wrap exactly one value")
    if vend != bend:
        raise MalformedIonError("Ion annotation wrapper length does not match its value")
    return sids, aend, t, ln, vstart, vend


# --- scalar readers ------------------------------------------------------------------------


def read_decimal(buf: bytes, start: int, end: int) -> Decimal:
    if start == end:
        return Decimal(0)
    exponent, _, pos = read_varint(buf, start, end)
    coefficient, negative = read_int(buf, pos, end)
    sign = 1 if negative else 0
    return Decimal((sign, tuple(int(d) for d in str(abs(coefficient))), exponent))


def read_timestamp(buf: bytes, start: int, end: int) -> Any:
    """Decode a timestamp body into an amazon-ion ``Timestamp`` keeping precision and offset."""
    from amazon.ion.core import OffsetTZInfo, Timestamp, TimestampPrecision

    offset, offset_negative, pos = read_varint(buf, start, end)
    fields: list[int] = []
    while pos < end and len(fields) < 6:
        v, pos = read_varuint(buf, pos, end)
        fields.append(v)
    fraction: Decimal | None = None
    if pos < end:
        if len(fields) < 6:
            raise MalformedIonError("Ion timestamp has a fraction but no seconds")
        exponent, _, p = read_varint(buf, pos, end)
        coefficient, negative = read_int(buf, p, end)
        if negative and coefficient:
            raise MalformedIonError("Ion timestamp has negative fractional seconds")
        fraction = Decimal((0, tuple(int(d) for d in str(coefficient)), exponent))
        if fraction >= 1:
            raise MalformedIonError("Ion timestamp fractional seconds must be less than 1")
        if coefficient == 0 and exponent >= 0:
            fraction = None
    if not fields or len(fields) == 4:
        raise MalformedIonError("Ion timestamp has an hour without minutes, or no year")
    precision = {
        1: TimestampPrecision.YEAR,
        2: TimestampPrecision.MONTH,
        3: TimestampPrecision.DAY,
        5: TimestampPrecision.MINUTE,
        6: TimestampPrecision.SECOND,
    }[len(fields)]
    year, month, day, hour, minute, second = fields + [1, 1, 1, 0, 0, 0][len(fields) :]

    tz = None if offset_negative and offset == 0 else OffsetTZInfo(timedelta(minutes=offset))
    try:
        utc = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise MalformedIonError(f"Ion timestamp is not a valid date/time: {exc}") from None
    local = utc + timedelta(minutes=offset) if precision.includes_minute else utc
    kwargs: dict[str, Any] = {"precision": precision, "tzinfo": tz}
    if fraction is not None:
        kwargs["fractional_seconds"] = fraction
    return Timestamp(
        local.year,
        local.month,
        local.day,
        local.hour,
        local.minute,
        local.second,
        **kwargs,
    )
