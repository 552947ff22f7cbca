"""Ion Hash (amazon-ion/ion-hash ``docs/spec.md``), computed straight from Ion binary bytes.

Why our own: PyPI ``ionhash`` 1.2.1 (the last release, 2021) no longer imports with current
amazon-ion (it needs the removed ``_IonNature`` class), and it hashes *parsed* values: parsing
every record into Python objects and re-encoding each scalar costs ~400 µs per revision, two
orders of magnitude more than the SHA-256 work. This module walks the binary encoding once,
re-encodes only where the spec demands a minimal form (ints with leading zeros, decimals,
timestamps, 32-bit floats) and feeds the bytes to SHA-256. ``ionhash`` stays in the test suite
as an oracle, next to the official ``ion-hash-test`` vectors.

``s(value)`` (the spec's serialization) is built bottom-up as ``bytes``; a struct's
representation is the sorted concatenation of its field hashes, so only structs call the hash
function below the top level.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

from qldbstream.core.errors import IonHashError, MalformedIonError
from qldbstream.core.ion.binary import (
    T_ANNOTATION,
    T_BLOB,
    T_BOOL,
    T_CLOB,
    T_DECIMAL,
    T_FLOAT,
    T_LIST,
    T_NEGINT,
    T_NULL,
    T_POSINT,
    T_SEXP,
    T_STRING,
    T_STRUCT,
    T_SYMBOL,
    T_TIMESTAMP,
    Symbols,
    header,
    read_int,
    read_varint,
    read_varuint,
)
from qldbstream.core.ion.symbols import parse_record

__all__ = ["HashFunction", "ion_hash", "ion_hash_at", "ion_hash_bytes", "serialize_at"]

HashFunction = Callable[[bytes], bytes]

_B = b"\x0b"
_E = b"\x0e"
_SID0 = b"\x0b\x71\x0e"
_NULLS = {t: bytes((0x0B, (t << 4) | 0x0F, 0x0E)) for t in range(14)}
_NULLS[T_NULL] = b"\x0b\x0f\x0e"
_NULLS[T_NEGINT] = _NULLS[T_POSINT]  # 0x3F is null.int too (amazon-ion writes it back as 0x2F)
_BOOLS = (b"\x0b\x10\x0e", b"\x0b\x11\x0e")
_ZERO_INT = b"\x0b\x20\x0e"
_ZERO_FLOAT = b"\x0b\x40\x0e"
_ZERO_DECIMAL = b"\x0b\x50\x0e"
_NAN = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
_TQ = {t: bytes((0x0B, t << 4)) for t in range(15)}


_new_sha256 = hashlib.sha256


def _sha256(data: bytes) -> bytes:
    return _new_sha256(data).digest()


def _escape(rep: bytes) -> bytes:
    return rep.replace(b"\x0c", b"\x0c\x0c").replace(b"\x0b", b"\x0c\x0b").replace(b"\x0e", b"\x0c\x0e")


def _symbol(symbols: Symbols, sid: int, cache: dict[int, bytes]) -> bytes:
    """``s(symbol)`` for a symbol ID (field names, annotations and symbol values)."""
    ser = cache.get(sid)
    if ser is not None:
        return ser
    if sid == 0:
        ser = _SID0
    else:
        if sid >= len(symbols):
            raise MalformedIonError(f"Ion symbol ID {sid} is not in the symbol table")
        text = symbols[sid]
        if text is None:
            raise IonHashError(f"Ion symbol ID {sid} has unknown text and cannot be hashed")
        ser = b"\x0b\x70" + _escape(text.encode("utf-8")) + _E
    cache[sid] = ser
    return ser


def _varuint_bytes(value: int) -> bytes:
    out = bytearray([0x80 | (value & 0x7F)])
    value >>= 7
    while value:
        out.append(value & 0x7F)
        value >>= 7
    out.reverse()
    return bytes(out)


def _varint_bytes(value: int, negative: bool) -> bytes:
    magnitude = -value if value < 0 else value
    groups = []
    while True:
        groups.append(magnitude & 0x7F)
        magnitude >>= 7
        if not magnitude:
            break
    if groups[-1] & 0x40:  # the sign bit is needed: add a byte
        groups.append(0)
    groups.reverse()
    groups[-1] |= 0x80
    if negative:
        groups[0] |= 0x40
    return bytes(groups)


def _int_bytes(value: int, negative: bool) -> bytes:
    """Minimal Ion Int subfield (sign-magnitude); empty for positive zero."""
    magnitude = -value if value < 0 else value
    if magnitude == 0:
        return b"\x80" if negative else b""
    raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    if negative:
        raw = bytes([raw[0] | 0x80]) + raw[1:]
    return raw


def _decimal_rep(buf: bytes, start: int, end: int) -> bytes:
    if start == end:
        return b""
    exponent, _, pos = read_varint(buf, start, end)
    coefficient, negative = read_int(buf, pos, end)
    if coefficient == 0 and not negative and exponent == 0:
        return b""
    return _varint_bytes(exponent, exponent < 0) + _int_bytes(coefficient, negative)


def _timestamp_rep(buf: bytes, start: int, end: int) -> bytes:
    """Minimal timestamp representation; the bytes as they are when already minimal (usual case)."""
    # Split into VarUInt/VarInt components by their end bits; a component whose first byte carries
    # no magnitude bits but is not its last byte is padded (not minimal).
    pos = start
    count = 0  # components read: offset, year, month, day, hour, minute, second
    minimal = True
    while pos < end and count < 7:
        b = buf[pos]
        if not b & 0x80 and (b & (0x3F if count == 0 else 0x7F)) == 0:
            minimal = False
        while not b & 0x80:
            pos += 1
            if pos >= end:
                raise MalformedIonError("Ion timestamp component runs past the end of its value")
            b = buf[pos]
        pos += 1
        count += 1
    if not minimal or count in (1, 5):
        return _timestamp_reencode(buf, start, end)
    if pos == end:
        return buf[start:end]
    # fractional seconds: exponent VarInt, then coefficient Int (the rest)
    b = buf[pos]
    if b == 0xC0 or (not b & 0x80 and not b & 0x3F):  # -0 exponent, or a padded one
        return _timestamp_reencode(buf, start, end)
    exp_negative = b & 0x40
    while not b & 0x80:
        pos += 1
        if pos >= end:
            raise MalformedIonError("Ion timestamp fraction runs past the end of its value")
        b = buf[pos]
    pos += 1
    if pos == end:
        if exp_negative:  # 0d-N: zero with N digits of precision, kept without a coefficient
            return buf[start:end]
        return _timestamp_reencode(buf, start, end)
    c0 = buf[pos]
    if c0 & 0x80 or (c0 == 0 and (pos + 1 == end or not buf[pos + 1] & 0x80)):
        return _timestamp_reencode(buf, start, end)
    return buf[start:end]


def _timestamp_reencode(buf: bytes, start: int, end: int) -> bytes:
    offset, offset_negative, pos = read_varint(buf, start, end)
    out = [_varint_bytes(offset, offset_negative)]
    count = 0
    while pos < end and count < 6:
        v, pos = read_varuint(buf, pos, end)
        out.append(_varuint_bytes(v))
        count += 1
    if count == 0 or count == 4:
        raise MalformedIonError("Ion timestamp has an hour without minutes, or no year")
    if pos < end:
        if count < 6:
            raise MalformedIonError("Ion timestamp has a fraction but no seconds")
        exponent, _, p = read_varint(buf, pos, end)
        coefficient, _ = read_int(buf, p, end)
        if coefficient < 0:
            raise MalformedIonError("Ion timestamp has negative fractional seconds")
        if coefficient or exponent < 0:
            out.append(_varint_bytes(exponent, exponent < 0))
            out.append(_int_bytes(coefficient, False))
    return b"".join(out)


def _float_rep(buf: bytes, start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return b""
    if n == 8:
        raw = buf[start:end]
        value = struct.unpack(">d", raw)[0]
    elif n == 4:
        value = struct.unpack(">f", buf[start:end])[0]
        raw = struct.pack(">d", value)
    else:
        raise MalformedIonError(f"Ion float has length {n} (must be 0, 4 or 8)")
    if math.isnan(value):
        return _NAN
    if value == 0 and not raw[0] & 0x80:
        return b""
    return raw


def serialize_at(
    buf: bytes,
    pos: int,
    end: int,
    symbols: Symbols,
    h: HashFunction = _sha256,
    cache: dict[int, bytes] | None = None,
) -> bytes:
    """``s(value)`` of the value whose type descriptor is at ``buf[pos]`` (within ``end``)."""
    return _ser(buf, pos, end, symbols, h, {} if cache is None else cache)[0]


#: Deeper nesting is rejected as malformed (a hostile record must not exhaust the stack); the
#: compiled scanner has the same limit and message.
MAX_DEPTH = 100


def _ser(
    buf: bytes,
    pos: int,
    end: int,
    symbols: Symbols,
    h: HashFunction,
    cache: dict[int, bytes],
    depth: int = 0,
) -> tuple[bytes, int]:
    """``(s(value), end of value)``. The value header is decoded inline: this is the hot loop."""
    if depth > MAX_DEPTH:
        raise MalformedIonError(f"Ion value is nested more than {MAX_DEPTH} levels deep")
    td = buf[pos]
    t = td >> 4
    ln = td & 0x0F
    pos += 1
    if ln == 15:
        if t >= T_ANNOTATION:
            raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")
        return _NULLS[t], pos
    if t == T_BOOL:
        if ln > 1:
            raise MalformedIonError(f"invalid Ion bool type descriptor 0x{td:02x}")
        return _BOOLS[ln], pos
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
    else:
        length = ln
    stop = pos + length
    if stop > end:
        raise MalformedIonError("Ion value is truncated (its length runs past the end of its container)")
    if t == T_STRING or t == T_BLOB or t == T_CLOB:
        return _TQ[t] + _escape(buf[pos:stop]) + _E, stop
    if t == T_STRUCT:
        fields = []
        p = pos
        while p < stop:
            sid = 0
            while True:
                b = buf[p]
                p += 1
                sid = (sid << 7) | (b & 0x7F)
                if b & 0x80:
                    break
                if p >= stop:
                    raise MalformedIonError("Ion field name runs past the end of its struct")
            if p >= stop:
                raise MalformedIonError("Ion struct field has a name but no value")
            vtd = buf[p]
            if vtd < 0x0F:  # NOP padding (type 0, any length but 15)
                p = header(buf, p, stop)[3]
                continue
            value, p = _ser(buf, p, stop, symbols, h, cache, depth + 1)
            name = cache.get(sid)
            if name is None:
                name = _symbol(symbols, sid, cache)
            fields.append(h(name + value))
        fields.sort()
        return b"\x0b\xd0" + _escape(b"".join(fields)) + _E, stop
    if t == T_SYMBOL:
        sid = int.from_bytes(buf[pos:stop], "big")
        ser = cache.get(sid)
        return (ser if ser is not None else _symbol(symbols, sid, cache)), stop
    if t == T_POSINT or t == T_NEGINT:
        i = pos
        while i < stop and buf[i] == 0:
            i += 1
        if i == stop:
            return _ZERO_INT, stop
        return _TQ[t] + _escape(buf[i:stop]) + _E, stop
    if t == T_TIMESTAMP:
        return b"\x0b\x60" + _escape(_timestamp_rep(buf, pos, stop)) + _E, stop
    if t == T_DECIMAL:
        rep = _decimal_rep(buf, pos, stop)
        return (b"\x0b\x50" + _escape(rep) + _E if rep else _ZERO_DECIMAL), stop
    if t == T_LIST or t == T_SEXP:
        parts = [_TQ[t]]
        p = pos
        while p < stop:
            if buf[p] < 0x0F:  # NOP padding
                p = header(buf, p, stop)[3]
                continue
            value, p = _ser(buf, p, stop, symbols, h, cache, depth + 1)
            parts.append(value)
        parts.append(_E)
        return b"".join(parts), stop
    if t == T_FLOAT:
        rep = _float_rep(buf, pos, stop)
        return (b"\x0b\x40" + _escape(rep) + _E if rep else _ZERO_FLOAT), stop
    if t == T_ANNOTATION:
        alen, p = read_varuint(buf, pos, stop)
        aend = p + alen
        if alen == 0 or aend >= stop:
            raise MalformedIonError("Ion annotation wrapper has no annotations or no value")
        parts = [b"\x0b\xe0"]
        while p < aend:
            sid, p = read_varuint(buf, p, aend)
            parts.append(_symbol(symbols, sid, cache))
        if buf[aend] >> 4 == T_ANNOTATION or buf[aend] < 0x0F:
            raise MalformedIonError("Ion annotation wrapper must wrap exactly one value")
        value, p = _ser(buf, aend, stop, symbols, h, cache, depth + 1)
        if p != stop:
            raise MalformedIonError("Ion annotation wrapper length does not match its value")
        parts.append(value)
        parts.append(_E)
        return b"".join(parts), stop
    if t == T_NULL:
        raise MalformedIonError("Ion NOP padding where a value was expected")
    raise MalformedIonError(f"invalid Ion type descriptor 0x{td:02x}")


def ion_hash_at(
    buf: bytes,
    pos: int,
    end: int,
    symbols: Symbols,
    h: HashFunction = _sha256,
    cache: dict[int, bytes] | None = None,
) -> bytes:
    """``H(value)`` of the value at ``pos`` in an already-parsed record.

    ``cache`` maps symbol IDs to their serialization; pass the record's
    :attr:`SymbolTable.serialized <qldbstream.core.ion.symbols.SymbolTable.serialized>` to share it.
    """
    return h(_ser(buf, pos, end, symbols, h, {} if cache is None else cache)[0])


def ion_hash_bytes(data: bytes, h: HashFunction = _sha256) -> bytes:
    """``H(value)`` of the single top-level value of an Ion binary stream."""
    view = parse_record(data)
    return h(_ser(view.buf, view.pos, view.end, view.symbols, h, view.table.serialized)[0])


def ion_hash(value: Any, h: HashFunction = _sha256) -> bytes:
    """``H(value)`` of an amazon-ion value (``simpleion`` types or plain Python values).

    The value is encoded with amazon-ion's binary writer, which keeps the Ion data model
    (timestamp precision and offset, decimal exponents, symbols vs strings, typed nulls), and
    hashed from those bytes. Plain Python values follow amazon-ion's mapping (``str`` is a
    string, ``float`` a float, ``datetime`` a timestamp, ``Decimal`` a decimal).
    """
    from amazon.ion import simpleion

    return ion_hash_bytes(simpleion.dumps(value, binary=True), h)
