"""Ion ↔ JSONB: a lossless, documented mapping (docs/handlers/postgres.md, "The mapping").

PostgreSQL's ``jsonb`` holds JSON only, and QLDB documents are Ion: decimals with their exponent,
timestamps with their precision and offset, blobs, symbols, typed nulls, annotations. Values JSON
holds exactly are written as JSON; every other value becomes a *tagged object*, a JSON object with
the key ``"$ion"`` naming the Ion type:

=====================================  =========================================================
Ion                                    JSON
=====================================  =========================================================
``null`` (``null.null``)               ``null``
bool, int (any size), list             ``true``/``false``, a JSON integer, an array
string                                 a JSON string; with a U+0000 (jsonb refuses it):
                                       ``{"$ion": "string", "utf8": "<base64>"}``
struct                                 an object, unless a field name repeats, is ``"$ion"`` or
                                       holds U+0000: ``{"$ion": "struct", "fields": [[name, v], ...]}``
                                       (``name`` mapped as a string)
decimal                                ``{"$ion": "decimal", "v": "1.10"}`` - the exact digits,
                                       exponent and sign (``"-0"``, ``"1E+3"``, ``"0E-8"``)
float                                  ``{"$ion": "float", "v": "0.1"}`` - Python's shortest
                                       round-trip text, ``"nan"``, ``"inf"``, ``"-inf"``, ``"-0.0"``
timestamp                              ``{"$ion": "timestamp", "v": "2024-03-01T10:00:00.120Z"}`` -
                                       Ion text: precision, fraction digits and offset
                                       (``-00:00`` = unknown offset) kept
symbol                                 ``{"$ion": "symbol", "v": "text"}`` (``v`` mapped as a string)
blob, clob                             ``{"$ion": "blob", "v": "<base64>"}``, ``{"$ion": "clob", ...}``
sexp                                   ``{"$ion": "sexp", "v": [ ... ]}``
typed null                             ``{"$ion": "null", "type": "int"}`` (Ion type name)
annotated value                        ``{"$ion": "annotated", "annotations": ["a", ...], "v": ...}``
=====================================  =========================================================

A JSON object with the key ``"$ion"`` is always a tag, so a document field named ``$ion`` forces the
``fields`` form of its struct. :func:`from_jsonb` is the exact inverse of :func:`to_jsonb`: the Ion
hash of ``from_jsonb(to_jsonb(v))`` equals that of ``v`` (tests/handlers/test_postgres_mapping.py).
Field order inside a struct is not kept (Ion structs are unordered; no hash depends on it).
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal, InvalidOperation
from typing import Any

from amazon.ion import simpleion
from amazon.ion.core import IonType, Timestamp
from amazon.ion.simple_types import (
    IonPyBool,
    IonPyBytes,
    IonPyDecimal,
    IonPyDict,
    IonPyFloat,
    IonPyInt,
    IonPyList,
    IonPyNull,
    IonPySymbol,
    IonPyText,
    IonPyTimestamp,
)
from amazon.ion.symbols import SymbolToken

__all__ = ["TAG", "MappingError", "from_jsonb", "to_jsonb"]

#: The key that marks a tagged object.
TAG = "$ion"
_NULL_TYPES = {t.name.lower(): t for t in IonType if t is not IonType.NULL}


class MappingError(ValueError):
    """A value the mapping cannot carry (a symbol without text) or JSON that is not the mapping's."""


# --- Ion -> JSON ----------------------------------------------------------------------------------


def _ion_type(value: Any) -> IonType:
    """The Ion type of an amazon-ion value, or of a plain Python value by amazon-ion's mapping."""
    ion_type = getattr(value, "ion_type", None)
    if ion_type is not None:
        return ion_type
    if value is None:
        return IonType.NULL
    if isinstance(value, bool):
        return IonType.BOOL
    if isinstance(value, int):
        return IonType.INT
    if isinstance(value, float):
        return IonType.FLOAT
    if isinstance(value, Decimal):
        return IonType.DECIMAL
    if isinstance(value, Timestamp) or hasattr(value, "tzinfo"):
        return IonType.TIMESTAMP
    if isinstance(value, SymbolToken):
        return IonType.SYMBOL
    if isinstance(value, str):
        return IonType.STRING
    if isinstance(value, bytes | bytearray):
        return IonType.BLOB
    if isinstance(value, dict):
        return IonType.STRUCT
    if isinstance(value, list | tuple):
        return IonType.LIST
    raise MappingError(f"{type(value).__name__} is not an Ion value")


def _text(text: str) -> Any:
    if "\x00" in text:
        return {TAG: "string", "utf8": base64.b64encode(text.encode("utf-8")).decode("ascii")}
    return text


def _symbol_text(value: Any) -> str:
    text = value.text if isinstance(value, SymbolToken) else value
    if text is None:
        raise MappingError("a symbol with unknown text ($0 or an unresolved ID) cannot be migrated")
    return str(text)


def _items(value: Any) -> list[tuple[str, Any]]:
    items = value.iteritems() if isinstance(value, IonPyDict) else value.items()
    return [(_symbol_text(k), v) for k, v in items]


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(float(value))


def _timestamp_text(value: Any) -> str:
    plain = IonPyTimestamp.from_value(IonType.TIMESTAMP, value)  # drop annotations, keep the rest
    text: str = simpleion.dumps(plain, binary=False)
    return text.removeprefix("$ion_1_0 ")


def to_jsonb(value: Any) -> Any:
    """The JSON form of one Ion value (amazon-ion ``simpleion`` types or plain Python values)."""
    annotations = getattr(value, "ion_annotations", ())
    body = _bare(value)
    if annotations:
        return {TAG: "annotated", "annotations": [_text(_symbol_text(a)) for a in annotations], "v": body}
    return body


def _bare(value: Any) -> Any:
    ion_type = _ion_type(value)
    if isinstance(value, IonPyNull) or value is None:
        return None if ion_type is IonType.NULL else {TAG: "null", "type": ion_type.name.lower()}
    if ion_type is IonType.BOOL:
        return bool(value)
    if ion_type is IonType.INT:
        return int(value)
    if ion_type is IonType.STRING:
        return _text(str(value))
    if ion_type is IonType.LIST:
        return [to_jsonb(v) for v in value]
    if ion_type is IonType.STRUCT:
        items = _items(value)
        names = [k for k, _ in items]
        if len(set(names)) == len(names) and TAG not in names and not any("\x00" in k for k in names):
            return {k: to_jsonb(v) for k, v in items}
        return {TAG: "struct", "fields": [[_text(k), to_jsonb(v)] for k, v in items]}
    if ion_type is IonType.DECIMAL:
        return {TAG: "decimal", "v": str(Decimal(value))}
    if ion_type is IonType.FLOAT:
        return {TAG: "float", "v": _float_text(float(value))}
    if ion_type is IonType.TIMESTAMP:
        return {TAG: "timestamp", "v": _timestamp_text(value)}
    if ion_type is IonType.SYMBOL:
        return {TAG: "symbol", "v": _text(_symbol_text(value))}
    if ion_type in (IonType.BLOB, IonType.CLOB):
        kind = "blob" if ion_type is IonType.BLOB else "clob"
        return {TAG: kind, "v": base64.b64encode(bytes(value)).decode("ascii")}
    if ion_type is IonType.SEXP:
        return {TAG: "sexp", "v": [to_jsonb(v) for v in value]}
    raise MappingError(f"Ion type {ion_type.name} has no JSON mapping")


# --- JSON -> Ion ----------------------------------------------------------------------------------


def _string(node: Any, where: str) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and node.get(TAG) == "string" and isinstance(node.get("utf8"), str):
        return base64.b64decode(node["utf8"], validate=True).decode("utf-8")
    raise MappingError(f"{where}: expected a string, got {node!r:.80}")


def from_jsonb(node: Any, annotations: tuple[str, ...] = ()) -> Any:
    """The Ion value (amazon-ion ``simpleion`` types) a JSON form of :func:`to_jsonb` stands for."""
    try:
        return _from(node, annotations)
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        if isinstance(exc, MappingError):
            raise
        raise MappingError(f"not a mapped Ion value ({exc!r}): {node!r:.120}") from None


def _from(node: Any, ann: tuple[str, ...]) -> Any:
    if node is None:
        return IonPyNull.from_value(IonType.NULL, None, ann)
    if isinstance(node, bool):
        return IonPyBool.from_value(IonType.BOOL, node, ann)
    if isinstance(node, int):
        return IonPyInt.from_value(IonType.INT, node, ann)
    if isinstance(node, float):
        raise MappingError(f"a JSON number with a fraction ({node}) is not in the mapping: use a tag")
    if isinstance(node, str):
        return IonPyText.from_value(IonType.STRING, node, ann)
    if isinstance(node, list):
        return IonPyList.from_value(IonType.LIST, [from_jsonb(v) for v in node], ann)
    if not isinstance(node, dict):
        raise MappingError(f"{type(node).__name__} is not JSON")
    if TAG not in node:
        out = IonPyDict.from_value(IonType.STRUCT, {}, ann)
        for k, v in node.items():
            out.add_item(k, from_jsonb(v))
        return out
    return _tagged(node, ann)


def _tagged(node: dict[str, Any], ann: tuple[str, ...]) -> Any:
    tag = node[TAG]
    v: Any = node.get("v")
    if tag == "string":
        return IonPyText.from_value(IonType.STRING, _string(node, "string"), ann)
    if tag == "annotated":
        if ann:
            raise MappingError("nested 'annotated' tags: annotations belong in one list")
        names = tuple(_string(a, "annotation") for a in node["annotations"])
        if not names:
            raise MappingError("an 'annotated' tag needs at least one annotation")
        return from_jsonb(v, names)
    if tag == "struct":
        out = IonPyDict.from_value(IonType.STRUCT, {}, ann)
        for name, value in node["fields"]:
            out.add_item(_string(name, "field name"), from_jsonb(value))
        return out
    if tag == "decimal":
        return IonPyDecimal.from_value(IonType.DECIMAL, Decimal(_string(v, "decimal")), ann)
    if tag == "float":
        return IonPyFloat.from_value(IonType.FLOAT, float(_string(v, "float")), ann)
    if tag == "timestamp":
        text = _string(v, "timestamp")
        loaded = simpleion.loads(text)
        if getattr(loaded, "ion_type", None) is not IonType.TIMESTAMP:
            raise MappingError(f"{text!r} is not an Ion timestamp")
        return IonPyTimestamp.from_value(IonType.TIMESTAMP, loaded, ann)
    if tag == "symbol":
        return IonPySymbol.from_value(IonType.SYMBOL, _string(v, "symbol"), ann)
    if tag in ("blob", "clob"):
        raw = base64.b64decode(_string(v, tag), validate=True)
        return IonPyBytes.from_value(IonType.BLOB if tag == "blob" else IonType.CLOB, raw, ann)
    if tag == "sexp":
        if not isinstance(v, list):
            raise MappingError("a sexp tag needs a list")
        return IonPyList.from_value(IonType.SEXP, [from_jsonb(x) for x in v], ann)
    if tag == "null":
        return IonPyNull.from_value(_NULL_TYPES[node["type"]], None, ann)
    raise MappingError(f"unknown tag {TAG}={tag!r}")
