"""Ion symbol tables and the top level of a record: which symbol table a record's value is read with.

:func:`parse_record` checks the Ion version marker, reads the local symbol tables of a stream
(imports of unknown shared tables become symbols with unknown text; large imported ranges stay
sparse, :class:`SparseSymbols`), caches tables by their bytes (records of one stream share them)
and returns the one top-level value as a :class:`RecordView`. The readers it builds on are in
:mod:`qldbstream.core.ion.binary`; ``native/src/symbols.rs`` is the compiled twin.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qldbstream.core.errors import MalformedIonError
from qldbstream.core.ion.binary import (
    IVM,
    T_LIST,
    T_NULL,
    T_POSINT,
    T_STRING,
    T_STRUCT,
    T_SYMBOL,
    Symbols,
    header,
    iter_list,
    iter_struct,
    read_uint,
    read_varuint,
    unwrap,
)

__all__ = ["SYSTEM_SYMBOLS", "SYSTEM_TABLE", "RecordView", "SparseSymbols", "SymbolTable", "parse_record"]

SYSTEM_SYMBOLS: tuple[str | None, ...] = (
    None,
    "$ion",
    "$ion_1_0",
    "$ion_symbol_table",
    "name",
    "version",
    "imports",
    "symbols",
    "max_id",
    "$ion_shared_symbol_table",
)
_SID_ION_SYMBOL_TABLE = 3
_SID_IMPORTS = 6
_SID_SYMBOLS = 7
_SID_MAX_ID = 8


def _symbol_strings(buf: bytes, start: int, end: int) -> list[str | None]:
    """The ``symbols`` list of a local symbol table: texts, ``None`` for non-string entries."""
    out: list[str | None] = []
    for spos, send in iter_list(buf, start, end):
        td = buf[spos]
        if td >> 4 == T_STRING and td != 0x8F:
            body = spos + 1
            if td & 0x0F == 14:
                _, body = read_varuint(buf, body, send)
            try:
                out.append(buf[body:send].decode("utf-8"))
            except UnicodeDecodeError:
                raise MalformedIonError("Ion string is not valid UTF-8") from None
        else:
            out.append(None)  # not a string: a symbol with unknown text
    return out


#: Up to this many imported IDs of unknown shared tables get a slot each; beyond, the table is
#: kept sparse (a 60-byte record could otherwise ask for billions of slots).
_DENSE_IMPORT_LIMIT = 1 << 16


class SparseSymbols(Sequence[str | None]):
    """A symbol table with large imported ranges whose texts are unknown: texts by ID, no slot per ID."""

    __slots__ = ("_known", "_size")

    def __init__(self, known: dict[int, str | None], size: int) -> None:
        self._known = known
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, sid: int) -> str | None:  # type: ignore[override]
        if not 0 <= sid < self._size:
            raise IndexError(sid)
        return self._known.get(sid)


def _local_symbol_table(
    buf: bytes, start: int, end: int, current: Sequence[str | None]
) -> Sequence[str | None]:
    """Apply a ``$ion_symbol_table::{...}`` struct body and return the new symbol table."""
    segments: list[Sequence[str | None] | int] = [SYSTEM_SYMBOLS]
    new: list[str | None] = []
    for sid, _, vpos, vend in iter_struct(buf, start, end, current):
        t, ln, bstart, bend = header(buf, vpos, vend)
        if sid == _SID_IMPORTS and ln != 15:
            if t == T_SYMBOL and read_uint(buf, bstart, bend) == _SID_ION_SYMBOL_TABLE:
                segments = [current]  # append to the current local symbol table
            elif t == T_LIST:
                for ipos, iend in iter_list(buf, bstart, bend):
                    segments.append(_shared_import(buf, ipos, iend, current))
        elif sid == _SID_SYMBOLS and t == T_LIST and ln != 15:
            new.extend(_symbol_strings(buf, bstart, bend))
    segments.append(new)
    size = sum(x if isinstance(x, int) else len(x) for x in segments)
    if size > sys.maxsize:
        raise MalformedIonError("Ion symbol table is too large (more than 2**64 symbols)")
    gaps = sum(x for x in segments if isinstance(x, int))
    if gaps <= _DENSE_IMPORT_LIMIT and not any(isinstance(x, SparseSymbols) for x in segments):
        dense: list[str | None] = []
        for x in segments:
            dense.extend([None] * x if isinstance(x, int) else x)
        return dense
    known: dict[int, str | None] = {}
    offset = 0
    for x in segments:
        if isinstance(x, int):
            offset += x
            continue
        if isinstance(x, SparseSymbols):
            known.update((offset + k, v) for k, v in x._known.items())
        else:
            known.update((offset + i, v) for i, v in enumerate(x) if v is not None)
        offset += len(x)
    return SparseSymbols(known, offset)


def _shared_import(buf: bytes, pos: int, end: int, current: Sequence[str | None]) -> int:
    """A shared symbol table import we do not have: how many IDs it takes (texts unknown)."""
    t, ln, bstart, bend = header(buf, pos, end)
    if t != T_STRUCT or ln == 15:
        return 0
    name: str | None = None
    max_id: int | None = None
    for sid, _, vpos, vend in iter_struct(buf, bstart, bend, current):
        vt, vln, vbs, vbe = header(buf, vpos, vend)
        if sid == 4 and vt == T_STRING and vln != 15:
            name = _utf8(buf, vbs, vbe)
        elif sid == _SID_MAX_ID and vt == T_POSINT and vln != 15:
            max_id = read_uint(buf, vbs, vbe)
    if name is None or name == "$ion":
        return 0
    if max_id is None:
        raise MalformedIonError(f"Ion import of unknown shared symbol table {name!r} has no max_id")
    return max_id


def _utf8(buf: bytes, start: int, end: int) -> str:
    try:
        return buf[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedIonError("Ion string is not valid UTF-8") from None


class SymbolTable:
    """A resolved symbol table, plus the Ion-hash serialization of its symbols (filled lazily).

    QLDB writes a local symbol table into every record, and records of one shape carry the very
    same table bytes, so tables are cached by their bytes and shared between records.
    """

    __slots__ = ("serialized", "symbols")

    def __init__(self, symbols: Symbols) -> None:
        self.symbols = symbols
        #: sid -> s(symbol) for the Ion hash (see :mod:`qldbstream.core.ion.hash`)
        self.serialized: dict[int, bytes] = {}


SYSTEM_TABLE = SymbolTable(list(SYSTEM_SYMBOLS))
_TABLE_CACHE: dict[bytes, SymbolTable] = {}
_TABLE_CACHE_LIMIT = 4096
_TABLE_CACHE_MAX_BYTES = 16 * 1024


class RecordView:
    """One Ion binary stream holding exactly one top-level value (a QLDB user record)."""

    __slots__ = ("buf", "end", "pos", "symbols", "table")

    def __init__(self, buf: bytes, table: SymbolTable, pos: int, end: int) -> None:
        self.buf = buf
        self.table = table
        self.symbols = table.symbols
        self.pos = pos
        self.end = end


def _new_table(buf: bytes, pos: int, stop: int, bstart: int, bend: int, current: Symbols) -> Symbols:
    """Check the symbol table value (amazon-ion reads all of it) and build the table it makes."""
    from qldbstream.core.ion.check import check_value

    check_value(buf, pos, stop, current)
    return _local_symbol_table(buf, bstart, bend, current)


def _symbol_table(
    buf: bytes, pos: int, stop: int, bstart: int, bend: int, current: SymbolTable
) -> SymbolTable:
    if current is SYSTEM_TABLE:
        key = buf[pos:stop]
        if len(key) > _TABLE_CACHE_MAX_BYTES:  # bound the cache's memory: huge tables are not shared
            return SymbolTable(_new_table(buf, pos, stop, bstart, bend, current.symbols))
        table = _TABLE_CACHE.get(key)
        if table is None:
            if len(_TABLE_CACHE) >= _TABLE_CACHE_LIMIT:
                _TABLE_CACHE.clear()
            table = _TABLE_CACHE[key] = SymbolTable(_new_table(buf, pos, stop, bstart, bend, current.symbols))
        return table
    return SymbolTable(_new_table(buf, pos, stop, bstart, bend, current.symbols))


def parse_record(buf: bytes) -> RecordView:
    """Locate the single top-level user value of an Ion binary stream.

    Handles the version marker and local symbol tables (including appends and imports).
    Raises :class:`MalformedIonError` for anything that is not exactly one value.
    """
    if buf[:4] != IVM:
        raise MalformedIonError("not an Ion binary stream (no Ion 1.0 version marker)")
    end = len(buf)
    pos = 4
    table = SYSTEM_TABLE
    found: tuple[int, int, SymbolTable] | None = None
    while pos < end:
        if buf[pos : pos + 4] == IVM:
            table = SYSTEM_TABLE
            pos += 4
            continue
        sids, _, t, ln, bstart, bend = unwrap(buf, pos, end)
        stop = header(buf, pos, end)[3]
        if t == T_NULL and ln != 15:
            pos = stop
            continue
        if sids and sids[0] == _SID_ION_SYMBOL_TABLE and t == T_STRUCT and ln != 15:
            table = _symbol_table(buf, pos, stop, bstart, bend, table)
        elif found is None:
            found = (pos, stop, table)
        else:
            raise MalformedIonError("Ion stream holds more than one top-level value")
        pos = stop
    if found is None:
        raise MalformedIonError("Ion stream holds no value")
    return RecordView(buf, found[2], found[0], found[1])
