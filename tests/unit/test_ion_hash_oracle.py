"""Our Ion hash agrees with PyPI ionhash (the oracle) on generated Ion values, and hashing works
on the data model: non-minimal binary encodings of one value hash the same."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType, OffsetTZInfo, Timestamp, TimestampPrecision
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

from qldbstream.core.errors import IonHashError, MalformedIonError
from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.hash import ion_hash, ion_hash_bytes
from tests.support.oracles import import_ionhash

oracle = import_ionhash()

annotations = st.lists(st.text(min_size=1, max_size=5), max_size=2).map(tuple)
texts = st.text(max_size=20)


def _timestamps() -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        precision = draw(st.sampled_from(list(TimestampPrecision)))
        year = draw(st.integers(1, 9999))
        month = draw(st.integers(1, 12))
        day = draw(st.integers(1, 28))
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

    return build()


def scalars() -> st.SearchStrategy[Any]:
    def wrap(cls: Any, ion_type: IonType) -> Any:
        return lambda v_ann: cls.from_value(ion_type, v_ann[0], v_ann[1])

    return st.one_of(
        st.tuples(st.integers(-(2**200), 2**200), annotations).map(wrap(IonPyInt, IonType.INT)),
        st.tuples(st.booleans(), annotations).map(wrap(IonPyBool, IonType.BOOL)),
        # NaN: see test_every_nan_hashes_as_the_canonical_nan
        st.tuples(st.floats(allow_nan=False), annotations).map(wrap(IonPyFloat, IonType.FLOAT)),
        st.tuples(st.decimals(allow_nan=False, allow_infinity=False), annotations).map(
            wrap(IonPyDecimal, IonType.DECIMAL)
        ),
        st.tuples(_timestamps(), annotations).map(wrap(IonPyTimestamp, IonType.TIMESTAMP)),
        st.tuples(texts, annotations).map(wrap(IonPyText, IonType.STRING)),
        st.tuples(texts, annotations).map(wrap(IonPySymbol, IonType.SYMBOL)),
        st.tuples(st.binary(max_size=40), annotations).map(wrap(IonPyBytes, IonType.BLOB)),
        st.tuples(st.binary(max_size=40), annotations).map(wrap(IonPyBytes, IonType.CLOB)),
        st.sampled_from(list(IonType)).map(lambda t: IonPyNull.from_value(t, None)),
    )


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def as_struct(items: list[tuple[str, Any]]) -> Any:
        d = IonPyDict.from_value(IonType.STRUCT, {})
        for k, v in items:
            d.add_item(k, v)  # keeps repeated field names, as Ion structs may have
        return d

    return st.one_of(
        st.lists(children, max_size=5).map(lambda xs: IonPyList.from_value(IonType.LIST, xs)),
        st.lists(children, max_size=5).map(lambda xs: IonPyList.from_value(IonType.SEXP, xs)),
        st.lists(st.tuples(texts, children), max_size=6).map(as_struct),
    )


ion_values = st.recursive(scalars(), containers, max_leaves=25)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ion_values)
def test_agrees_with_ionhash(value: Any) -> None:
    assert ion_hash(value) == oracle(value)
    # and on the values amazon-ion reads back from the binary it wrote
    assert ion_hash(value) == oracle(simpleion.loads(simpleion.dumps(value, binary=True)))


@pytest.mark.parametrize(
    "bits", ["7ff8000000000000", "fff8000000000000", "7ff0000000000001", "7ff4000000000000"]
)
def test_every_nan_hashes_as_the_canonical_nan(bits: str) -> None:
    # Ion Hash spec: "each float has just one encoding"; the vector for nan is 7f f8 00 .. 00.
    # ionhash-python packs the raw bits instead, so a NaN with a sign or payload differs there.
    canonical = b"\x0b\x40\x7f\xf8\x00\x00\x00\x00\x00\x00\x0e"
    assert ion_hash_bytes(IVM + b"\x48" + bytes.fromhex(bits), bytes) == canonical


def test_known_value() -> None:
    # qldb-stream-format.md §4.1 worked example
    assert ion_hash("user1").hex() == "b74e2b11e78f6fd8215722299f022fbb58732214c7a604ba81889ff3aa4ddad8"


def _h(body: bytes) -> str:
    return ion_hash_bytes(IVM + body).hex()


@pytest.mark.parametrize(
    ("minimal", "variants"),
    [
        (b"\x21\x7f", [b"\x24\x00\x00\x00\x7f", b"\x2e\x81\x7f"]),  # padded UInt, VarUInt length
        (b"\x20", [b"\x22\x00\x00", b"\x30"]),  # zero with padding; negative zero
        (b"\x48\x3f\xf8\x00\x00\x00\x00\x00\x00", [b"\x44\x3f\xc0\x00\x00"]),  # 1.5 as float32
        (b"\x40", [b"\x48" + b"\x00" * 8]),  # 0e0 in 8 bytes
        (b"\x50", [b"\x51\x80", b"\x52\x80\x00", b"\x51\xc0"]),  # 0d0 forms from the spec
        (b"\x52\xc1\x0f", [b"\x54\x40\x81\x00\x0f"]),  # 1.5 with padded exponent and coefficient
        (b"\x68\x80\x0f\xd0\x81\x81\x80\x80\x80", [b"\x69\x80\x0f\xd0\x81\x81\x80\x80\x80\x81"]),
        (
            b"\xd3\x84\x21\x01",
            [b"\xd1\x83\x84\x21\x01", b"\xd5\x84\x21\x01\x80\x00", b"\xde\x83\x84\x21\x01"],
        ),
        (b"\xb2\x21\x01", [b"\xb3\x00\x21\x01", b"\xbe\x82\x21\x01"]),  # NOP pad inside a list
    ],
)
def test_non_minimal_encodings_hash_like_the_minimal_one(minimal: bytes, variants: list[bytes]) -> None:
    for v in variants:
        assert _h(v) == _h(minimal), v.hex()


def test_symbol_with_unknown_text_cannot_be_hashed() -> None:
    # local symbol table {symbols:[1]}: SID 10 exists but its text is unknown
    lst = b"\xe7\x81\x83\xd4\x87\xb2\x21\x01"
    with pytest.raises(IonHashError, match="unknown text"):
        ion_hash_bytes(IVM + lst + b"\x71\x0a")


@pytest.mark.parametrize(
    "body",
    [b"\x2e", b"\x88abc", b"\xd3\x8a\x21", b"\xf0", b"\xe3\x81\x84", b"\x21\x01\x21\x02", b""],
)
def test_malformed_ion_is_a_typed_error(body: bytes) -> None:
    with pytest.raises(MalformedIonError):
        ion_hash_bytes(IVM + body)
