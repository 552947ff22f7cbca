"""The Ion ↔ JSONB mapping of the PostgreSQL migration: lossless on generated Ion values (Ion
equality and the Ion hash survive JSON text, as jsonb stores it), the documented tagged forms, and
refusals of JSON that is not the mapping's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType, OffsetTZInfo, Timestamp, TimestampPrecision
from amazon.ion.equivalence import ion_equals
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qldbstream_handlers.postgres.mapping import MappingError, from_jsonb, to_jsonb

from qldbstream import ion_hash

annotations = st.lists(st.text(min_size=1, max_size=5), max_size=2).map(tuple)
#: U+0000 included on purpose: jsonb refuses it in strings, the mapping must carry it anyway
texts = st.text(max_size=12) | st.sampled_from(["", "\x00", "a\x00b", "$ion", "é€😀"])


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    precision = draw(st.sampled_from(list(TimestampPrecision)))
    year, month, day = draw(st.integers(1, 9999)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    kwargs: dict[str, Any] = {"precision": precision}
    if precision.includes_minute:
        offset = draw(st.none() | st.integers(-23 * 60 - 59, 23 * 60 + 59))
        if offset is not None:
            kwargs["tzinfo"] = OffsetTZInfo(timedelta(minutes=offset))
    if precision.includes_second:
        digits = draw(st.integers(0, 9))
        if digits:
            coefficient = draw(st.integers(0, 10**digits - 1))
            kwargs["fractional_seconds"] = Decimal((0, tuple(map(int, str(coefficient))), -digits))
    if not precision.includes_month:
        month = day = 1
    elif not precision.includes_day:
        day = 1
    if not precision.includes_minute:
        hour = minute = 0
    if not precision.includes_second:
        second = 0
    return Timestamp(year, month, day, hour, minute, second, **kwargs)


def _wrap(cls: Any, ion_type: IonType) -> Any:
    return lambda v_ann: cls.from_value(ion_type, v_ann[0], v_ann[1])


scalars = st.one_of(
    st.tuples(st.integers(-(2**200), 2**200), annotations).map(_wrap(IonPyInt, IonType.INT)),
    st.tuples(st.booleans(), annotations).map(_wrap(IonPyBool, IonType.BOOL)),
    st.tuples(st.floats(), annotations).map(_wrap(IonPyFloat, IonType.FLOAT)),  # nan, ±inf, -0.0
    st.tuples(st.decimals(allow_nan=False, allow_infinity=False), annotations).map(
        _wrap(IonPyDecimal, IonType.DECIMAL)
    ),
    st.tuples(timestamps(), annotations).map(_wrap(IonPyTimestamp, IonType.TIMESTAMP)),
    st.tuples(texts, annotations).map(_wrap(IonPyText, IonType.STRING)),
    st.tuples(texts, annotations).map(_wrap(IonPySymbol, IonType.SYMBOL)),
    st.tuples(st.binary(max_size=40), annotations).map(_wrap(IonPyBytes, IonType.BLOB)),
    st.tuples(st.binary(max_size=40), annotations).map(_wrap(IonPyBytes, IonType.CLOB)),
    st.tuples(st.sampled_from(list(IonType)), annotations).map(
        lambda t: IonPyNull.from_value(t[0], None, t[1])
    ),
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def as_struct(args: tuple[list[tuple[str, Any]], tuple[str, ...]]) -> Any:
        d = IonPyDict.from_value(IonType.STRUCT, {}, args[1])
        for k, v in args[0]:
            d.add_item(k, v)  # repeated field names too, as Ion structs may have
        return d

    return st.one_of(
        st.tuples(st.lists(children, max_size=5), annotations).map(
            lambda a: IonPyList.from_value(IonType.LIST, a[0], a[1])
        ),
        st.tuples(st.lists(children, max_size=5), annotations).map(
            lambda a: IonPyList.from_value(IonType.SEXP, a[0], a[1])
        ),
        st.tuples(st.lists(st.tuples(texts, children), max_size=6), annotations).map(as_struct),
    )


ion_values = st.recursive(scalars, containers, max_leaves=25)


def through_jsonb(value: Any) -> Any:
    """The value as jsonb hands it back: JSON text, keys reordered, parsed again."""
    text = json.dumps(to_jsonb(value), sort_keys=True, ensure_ascii=False)
    assert "\\u0000" not in text  # jsonb refuses U+0000 in strings
    return from_jsonb(json.loads(text))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ion_values)
def test_round_trip_is_exact_and_keeps_the_ion_hash(value: Any) -> None:
    back = through_jsonb(value)
    assert ion_equals(value, back), (value, back)
    assert ion_hash(back) == ion_hash(value)
    assert to_jsonb(back) == to_jsonb(value)


@pytest.fixture(scope="module")
def pg(postgres_dsn: str) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=ion_values)
def test_round_trip_through_a_postgresql_jsonb_column(pg: Any, value: Any) -> None:
    """What the server stores and hands back (jsonb normalises keys, numbers and escapes)."""
    from psycopg.types.json import Jsonb

    (stored,) = pg.execute("SELECT %s::jsonb", (Jsonb(to_jsonb(value)),)).fetchone()
    back = from_jsonb(stored)
    assert ion_equals(value, back), (value, back)
    assert ion_hash(back) == ion_hash(value)


@pytest.mark.parametrize(
    ("ion", "expected"),
    [
        ('"text"', "text"),
        ("true", True),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        ("null", None),
        ("[1, a]", [1, {"$ion": "symbol", "v": "a"}]),
        ("{a: 1}", {"a": 1}),
        ("1.10", {"$ion": "decimal", "v": "1.10"}),
        ("-0.", {"$ion": "decimal", "v": "-0"}),
        ("1d3", {"$ion": "decimal", "v": "1E+3"}),
        ("0d-8", {"$ion": "decimal", "v": "0E-8"}),
        ("0.1e0", {"$ion": "float", "v": "0.1"}),
        ("nan", {"$ion": "float", "v": "nan"}),
        ("-inf", {"$ion": "float", "v": "-inf"}),
        ("-0e0", {"$ion": "float", "v": "-0.0"}),
        ("2024-03-01T10:00:00.120Z", {"$ion": "timestamp", "v": "2024-03-01T10:00:00.120Z"}),
        ("2024-03-01T10:00-00:00", {"$ion": "timestamp", "v": "2024-03-01T10:00-00:00"}),
        ("2024T", {"$ion": "timestamp", "v": "2024T"}),
        ("{{AAEC}}", {"$ion": "blob", "v": "AAEC"}),
        ('{{"hi"}}', {"$ion": "clob", "v": "aGk="}),
        ("null.decimal", {"$ion": "null", "type": "decimal"}),
        ("(+ 1 2)", {"$ion": "sexp", "v": [{"$ion": "symbol", "v": "+"}, 1, 2]}),
        ("usd::12", {"$ion": "annotated", "annotations": ["usd"], "v": 12}),
        ("{a: 1, a: 2}", {"$ion": "struct", "fields": [["a", 1], ["a", 2]]}),
        ("{'$ion': 1}", {"$ion": "struct", "fields": [["$ion", 1]]}),
        ('"a\\0b"', {"$ion": "string", "utf8": "YQBi"}),
    ],
)
def test_the_documented_forms(ion: str, expected: Any) -> None:
    value = simpleion.loads(ion)
    assert to_jsonb(value) == expected
    assert ion_equals(from_jsonb(expected), value)


def test_plain_python_values_follow_amazon_ions_mapping() -> None:
    value = {"s": "x", "d": Decimal("2.50"), "b": b"\x01", "l": [1, True, None]}
    assert to_jsonb(value) == {
        "s": "x",
        "d": {"$ion": "decimal", "v": "2.50"},
        "b": {"$ion": "blob", "v": "AQ=="},
        "l": [1, True, None],
    }
    assert ion_hash(from_jsonb(to_jsonb(value))) == ion_hash(value)


@pytest.mark.parametrize(
    "node",
    [
        1.5,  # a JSON fraction is not in the mapping: decimals and floats are tagged
        {"$ion": "wat", "v": 1},
        {"$ion": "decimal", "v": "one"},
        {"$ion": "timestamp", "v": "yesterday"},
        {"$ion": "timestamp", "v": "12"},
        {"$ion": "blob", "v": "not base64!"},
        {"$ion": "null", "type": "nothing"},
        {"$ion": "annotated", "annotations": [], "v": 1},
        {"$ion": "sexp", "v": 3},
    ],
)
def test_json_that_is_not_the_mappings_is_refused(node: Any) -> None:
    with pytest.raises(MappingError):
        from_jsonb(node)


def test_a_symbol_without_text_cannot_be_migrated() -> None:
    from amazon.ion.symbols import SymbolToken

    with pytest.raises(MappingError, match="unknown text"):
        to_jsonb(IonPySymbol.from_value(IonType.SYMBOL, SymbolToken(None, 10)))
