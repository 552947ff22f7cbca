"""The Ion ↔ JSONB mapping of the PostgreSQL migration: lossless on generated Ion values (Ion
equality and the Ion hash survive JSON text, as jsonb stores it), the documented tagged forms, and
refusals of JSON that is not the mapping's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType
from amazon.ion.equivalence import ion_equals
from amazon.ion.simple_types import (
    IonPySymbol,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qldbstream_handlers.postgres.mapping import MappingError, from_jsonb, to_jsonb

from qldbstream import ion_hash
from tests.support import ion_values as strategies

#: U+0000 included on purpose: jsonb refuses it in strings, the mapping must carry it anyway
texts = st.text(max_size=12) | st.sampled_from(["", "\x00", "a\x00b", "$ion", "é€😀"])
#: NaN, ±inf and -0.0 included; typed nulls and containers annotated too
ion_values = strategies.ion_values(texts, nan=True, annotate_everything=True)


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
