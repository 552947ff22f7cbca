"""Refuse Ion that amazon-ion would not load, or would load to another value.

The scanner hashes values straight from their bytes and handlers read the same record through
amazon-ion (``simpleion.loads``). The two must agree: a record the scanner accepts loads in
amazon-ion, to the value that was hashed. :func:`check_value` walks a whole value and raises
:class:`~qldbstream.core.errors.MalformedIonError` wherever they would not:

* text that is not UTF-8 (amazon-ion: an untyped ``IonException`` on first access);
* timestamps that are not a valid date and time - month 13, day 0, February 30, hour 25,
  minute 112, a component that runs into the next - or that amazon-ion reads as another value:
  an offset on a timestamp without a time (dropped), an offset of 24 hours or more, a local
  time before year 1 or after 9999, a padded component, fractional seconds finer than
  nanoseconds (amazon-ion's C reader keeps 9 digits and returns another value: 1d-40 becomes
  1d-9);
* a negative zero int, a float that is not 0, 4 or 8 bytes, a bool whose length nibble is not
  0 or 1, an empty sorted struct, a symbol ID that is not in the symbol table, a decimal whose
  exponent is outside -6176..6111 (amazon-ion's decQuad range: beyond it the value changes);
* annotation wrappers that do not wrap exactly one value.

Local symbol tables are checked too (``binary._new_table``): amazon-ion reads all of a table.

The compiled scanner (``native/src/check.rs``) has the same checks, in the same order, with the
same messages. ``bench/fuzz_ion.py`` is the differential fuzz that found them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qldbstream.core.errors import MalformedIonError
from qldbstream.core.ion.binary import (
    T_ANNOTATION,
    T_BOOL,
    T_DECIMAL,
    T_FLOAT,
    T_LIST,
    T_NEGINT,
    T_NULL,
    T_SEXP,
    T_STRING,
    T_STRUCT,
    T_SYMBOL,
    T_TIMESTAMP,
    Symbols,
)

__all__ = ["MAX_CHECK_DEPTH", "check_timestamp", "check_value"]

#: Containers nested deeper than this are refused (the hash's own limit, 100 levels below a hashed
#: value, plus the record's three levels above ``data``).
MAX_CHECK_DEPTH = 103
#: amazon-ion's C reader represents decimals as decQuad where it can: exponents in this range
#: keep their value, others are changed (1d6112 reads as 1.0d6112) or refused.
DECIMAL_EXPONENTS = (-6176, 6111)
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _varuint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    value = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if b & 0x80:
            return value, pos
    raise MalformedIonError(f"Ion {what} runs past the end of its value")


def check_timestamp(buf: bytes, start: int, end: int) -> None:
    """Raise unless the timestamp body ``buf[start:end]`` is one amazon-ion reads as written."""
    if start >= end:
        raise MalformedIonError("Ion timestamp has no year")
    # offset: a VarInt (the sign bit is the first byte's 0x40; -0 is an unknown offset)
    b = buf[start]
    pos = start + 1
    negative = bool(b & 0x40)
    offset = b & 0x3F
    while not b & 0x80:
        if pos >= end:
            raise MalformedIonError("Ion timestamp offset runs past the end of its value")
        b = buf[pos]
        pos += 1
        offset = (offset << 7) | (b & 0x7F)
    unknown_offset = negative and offset == 0
    if pos - start > 2:  # amazon-ion reads at most two bytes (a padded +23:59 is three)
        raise MalformedIonError("Ion timestamp offset is longer than 2 bytes")
    if offset >= 24 * 60:
        raise MalformedIonError("Ion timestamp offset is 24 hours or more")
    fields: list[int] = []
    while pos < end and len(fields) < 6:
        if buf[pos] == 0:  # a padded year, month, day, hour, minute or second (the offset may be)
            raise MalformedIonError("Ion timestamp has a padded component")
        v, pos = _varuint(buf, pos, end, "timestamp component")
        fields.append(v)
    n = len(fields)
    if n == 0:
        raise MalformedIonError("Ion timestamp has no year")
    if n == 4:
        raise MalformedIonError("Ion timestamp has an hour without minutes")
    year = fields[0]
    if not 1 <= year <= 9999:
        raise MalformedIonError("Ion timestamp year is not 1 to 9999")
    if n > 1:
        month = fields[1]
        if not 1 <= month <= 12:
            raise MalformedIonError("Ion timestamp month is not 1 to 12")
        if n > 2:
            leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
            last = _DAYS[month - 1] + leap
            if not 1 <= fields[2] <= last:
                raise MalformedIonError(f"Ion timestamp day is not 1 to {last}")
    if n < 5:
        if not unknown_offset:
            raise MalformedIonError("Ion timestamp has an offset but no time (amazon-ion drops it)")
    else:
        if fields[3] > 23:
            raise MalformedIonError("Ion timestamp hour is not 0 to 23")
        if fields[4] > 59:
            raise MalformedIonError("Ion timestamp minute is not 0 to 59")
        if n == 6 and fields[5] > 59:
            raise MalformedIonError("Ion timestamp second is not 0 to 59")
        if offset and (year == 1 or year == 9999):  # the local time must be in years 1 to 9999 too
            utc = datetime(year, fields[1], fields[2], fields[3], fields[4], tzinfo=UTC)
            try:
                utc + timedelta(minutes=-offset if negative else offset)
            except OverflowError:
                raise MalformedIonError("Ion timestamp's local time is outside years 1 to 9999") from None
    if pos < end:
        if n < 6:
            raise MalformedIonError("Ion timestamp has a fraction but no seconds")
        b = buf[pos]
        pos += 1
        exp_negative = bool(b & 0x40)
        exponent = b & 0x3F
        while not b & 0x80:
            if pos >= end:
                raise MalformedIonError("Ion timestamp fraction runs past the end of its value")
            b = buf[pos]
            pos += 1
            exponent = (exponent << 7) | (b & 0x7F)
        coefficient = 0
        if pos < end:
            first = buf[pos]
            coefficient = int.from_bytes(bytes([first & 0x7F]) + buf[pos + 1 : end], "big")
            if first & 0x80 and coefficient:
                raise MalformedIonError("Ion timestamp has negative fractional seconds")
        if coefficient and not exp_negative:
            raise MalformedIonError("Ion timestamp fractional seconds must be less than 1")
        if exp_negative and exponent > 9:
            raise MalformedIonError(
                "Ion timestamp has fractional seconds finer than nanoseconds (amazon-ion changes them)"
            )
        if coefficient and coefficient >= 10**exponent:
            raise MalformedIonError("Ion timestamp fractional seconds must be less than 1")


def _check_decimal(buf: bytes, start: int, end: int) -> None:
    if start == end:
        return
    b = buf[start]
    pos = start + 1
    negative = bool(b & 0x40)
    exponent = b & 0x3F
    while not b & 0x80:
        if pos >= end:
            raise MalformedIonError("Ion decimal exponent runs past the end of its value")
        b = buf[pos]
        pos += 1
        exponent = (exponent << 7) | (b & 0x7F)
    if negative:
        exponent = -exponent
    lo, hi = DECIMAL_EXPONENTS
    if not lo <= exponent <= hi:
        raise MalformedIonError(
            f"Ion decimal exponent is outside {lo} to {hi} (amazon-ion changes or refuses it)"
        )


def _sid(symbols: Symbols, sid: int) -> None:
    if sid >= len(symbols):
        raise MalformedIonError(f"Ion symbol ID {sid} is not in the symbol table (max ID {len(symbols) - 1})")


def check_value(buf: bytes, pos: int, end: int, symbols: Symbols, depth: int = 0) -> int:
    """Check the value whose type descriptor is at ``pos``; return where it ends."""
    td = buf[pos]
    t = td >> 4
    ln = td & 0x0F
    pos += 1
    if ln == 15:
        if t >= T_ANNOTATION:
            raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
        return pos
    if t == T_BOOL:
        if ln > 1:
            raise MalformedIonError(f"invalid Ion bool type descriptor 0x{td:02x}")
        return pos
    if t == 15:
        raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
    if ln == 14 or (ln == 1 and t == T_STRUCT):
        length, pos = _varuint(buf, pos, end, "VarUInt")
        if ln == 1 and length == 0:
            raise MalformedIonError("Ion sorted struct is empty")
    else:
        length = ln
    stop = pos + length
    if stop > end:
        raise MalformedIonError("Ion value is truncated (its length runs past the end of its container)")
    if t == T_STRING:
        try:
            buf[pos:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedIonError("Ion string is not valid UTF-8") from None
    elif t == T_STRUCT or t == T_LIST or t == T_SEXP:
        if depth >= MAX_CHECK_DEPTH:
            raise MalformedIonError(f"Ion value is nested more than {MAX_CHECK_DEPTH} levels deep")
        in_struct = t == T_STRUCT
        p = pos
        while p < stop:
            if in_struct:
                sid, p = _varuint(buf, p, stop, "field name")
                if p >= stop:
                    raise MalformedIonError("Ion struct field has a name but no value")
                if buf[p] >= 0x0F:  # (a field of NOP padding has any name)
                    _sid(symbols, sid)
            if buf[p] < 0x0F:  # NOP padding
                vt = buf[p] & 0x0F
                p += 1
                if vt == 14:
                    n, p = _varuint(buf, p, stop, "VarUInt")
                    vt = n
                p += vt
                if p > stop:
                    raise MalformedIonError(
                        "Ion value is truncated (its length runs past the end of its container)"
                    )
                continue
            p = check_value(buf, p, stop, symbols, depth + 1)
    elif t == T_TIMESTAMP:
        check_timestamp(buf, pos, stop)
    elif t == T_DECIMAL:
        _check_decimal(buf, pos, stop)
    elif t == T_SYMBOL:
        if length > 4:  # amazon-ion overflows on more (leading zero bytes included)
            raise MalformedIonError("Ion symbol value is longer than 4 bytes")
        _sid(symbols, int.from_bytes(buf[pos:stop], "big"))
    elif t == T_NEGINT:
        if not any(buf[pos:stop]):
            raise MalformedIonError("Ion int is a negative zero")
    elif t == T_FLOAT:
        if length not in (0, 4, 8):
            raise MalformedIonError(f"Ion float has length {length} (must be 0, 4 or 8)")
    elif t == T_ANNOTATION:
        alen, p = _varuint(buf, pos, stop, "VarUInt")
        aend = p + alen
        if alen == 0 or aend >= stop:
            raise MalformedIonError("Ion annotation wrapper has no annotations or no value")
        while p < aend:
            sid, p = _varuint(buf, p, aend, "VarUInt")
            _sid(symbols, sid)
        if buf[aend] >> 4 == T_ANNOTATION or buf[aend] < 0x0F:
            raise MalformedIonError("Ion annotation wrapper must wrap exactly one value")
        if check_value(buf, aend, stop, symbols, depth) != stop:
            raise MalformedIonError("Ion annotation wrapper length does not match its value")
    elif t == T_NULL:
        raise MalformedIonError("Ion NOP padding where a value was expected")
    return stop
