"""Field paths in Ion value trees, copy-on-write updates, and type-preserving value changes."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Final

from amazon.ion.core import TimestampPrecision
from amazon.ion.simple_types import IonPyNull

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.values import (
    BASE62,
    IonType,
    IonValue,
    date,
    epoch_ms,
    ion_type_of,
    symbol,
    timestamp_ms,
)

__all__ = ["MISSING", "format_path", "get_path", "mutate", "parse_path", "set_path"]

_TOKEN = re.compile(r"([^.\[\]=:]+)|\[(\d+)\]")


def parse_path(path: str, spec: str = "") -> list[str | int]:
    """``transactionInfo.statements[0].statement`` -> ``[transactionInfo, statements, 0, statement]``."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        if tokens and path[pos] == ".":
            pos += 1
        m = _TOKEN.match(path, pos)
        if m is None or (not tokens and m[2] is not None):
            raise ConfigurationError(f"tamper {spec or path!r}: cannot read the field name {path!r}")
        tokens.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    if not tokens:
        raise ConfigurationError(f"tamper {spec!r}: no field named")
    return tokens


def format_path(path: list[str | int]) -> str:
    """The inverse of :func:`parse_path`."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


#: What :func:`get_path` returns for a path that does not exist.
MISSING: Final = object()


def get_path(node: IonValue, path: list[str | int]) -> IonValue:
    for key in path:
        if isinstance(key, int):
            if not isinstance(node, list) or not 0 <= key < len(node):
                return MISSING
            node = node[key]
        else:
            if not isinstance(node, dict) or key not in node:
                return MISSING
            node = node[key]
    return node


def set_path(node: IonValue, path: list[str | int], value: IonValue) -> IonValue:
    """A copy of ``node`` with ``value`` at ``path``; containers along the path are copied."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(key, int):
        out_list = list(node)
        out_list[key] = set_path(node[key], rest, value)
        return out_list
    out = dict(node)
    out[key] = set_path(node.get(key), rest, value) if rest else value
    return out


def _rotate(text: str) -> str:
    if text and text[-1] in BASE62:
        return text[:-1] + BASE62[(BASE62.index(text[-1]) + 1) % len(BASE62)]
    return text + "X"


def mutate(value: IonValue) -> IonValue:
    """A different value of the same Ion type (see the module docstring)."""
    ion_type = ion_type_of(value)
    if value is None or isinstance(value, IonPyNull):
        return {
            IonType.STRING: "tampered",
            IonType.SYMBOL: symbol("tampered"),
            IonType.INT: 0,
            IonType.DECIMAL: Decimal("0.00"),
            IonType.BOOL: True,
        }.get(ion_type, "tampered")
    if ion_type == IonType.BLOB:
        raw = bytes(value)
        return bytes([raw[0] ^ 0x01]) + raw[1:] if raw else b"\x00"
    if ion_type == IonType.STRING:
        return _rotate(str(value))
    if ion_type == IonType.SYMBOL:
        return symbol(_rotate(value.text))
    if ion_type == IonType.BOOL:
        return not value
    if ion_type == IonType.INT:
        return -(int(value) + 1)
    if ion_type == IonType.DECIMAL:
        return (Decimal(value) + 1).quantize(Decimal(value)) if Decimal(value).is_finite() else Decimal(0)
    if ion_type == IonType.FLOAT:
        return float(value) + 1.0
    if ion_type == IonType.TIMESTAMP:
        if getattr(value, "precision", None) == TimestampPrecision.DAY:
            moved = value + timedelta(days=1)
            return date(moved.year, moved.month, moved.day)
        return timestamp_ms(epoch_ms(value) + 1)
    raise ConfigurationError(f"a {ion_type.name.lower()} cannot be changed automatically: give =ION_TEXT")
