"""Hypothesis strategies for Ion values on amazon-ion's data model (the ``IonPy*`` types), shared by
the property tests that compare Ion values (the Ion hash oracle, the PostgreSQL JSONB mapping)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

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
from hypothesis import strategies as st

__all__ = ["annotations", "ion_values", "timestamps"]

annotations = st.lists(st.text(min_size=1, max_size=5), max_size=2).map(tuple)


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """Every precision, with and without an offset, 0-9 fraction digits."""
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


def ion_values(
    texts: st.SearchStrategy[str], *, nan: bool, annotate_everything: bool
) -> st.SearchStrategy[Any]:
    """Scalars of every Ion type (annotated), lists, sexps and structs with repeated field names.

    ``nan``: floats include NaN; ``annotate_everything``: typed nulls and containers carry
    annotations too (scalars always may).
    """
    no_annotations = st.just(())
    outer = annotations if annotate_everything else no_annotations
    scalars = st.one_of(
        st.tuples(st.integers(-(2**200), 2**200), annotations).map(_wrap(IonPyInt, IonType.INT)),
        st.tuples(st.booleans(), annotations).map(_wrap(IonPyBool, IonType.BOOL)),
        st.tuples(st.floats(allow_nan=nan), annotations).map(_wrap(IonPyFloat, IonType.FLOAT)),
        st.tuples(st.decimals(allow_nan=False, allow_infinity=False), annotations).map(
            _wrap(IonPyDecimal, IonType.DECIMAL)
        ),
        st.tuples(timestamps(), annotations).map(_wrap(IonPyTimestamp, IonType.TIMESTAMP)),
        st.tuples(texts, annotations).map(_wrap(IonPyText, IonType.STRING)),
        st.tuples(texts, annotations).map(_wrap(IonPySymbol, IonType.SYMBOL)),
        st.tuples(st.binary(max_size=40), annotations).map(_wrap(IonPyBytes, IonType.BLOB)),
        st.tuples(st.binary(max_size=40), annotations).map(_wrap(IonPyBytes, IonType.CLOB)),
        st.tuples(st.sampled_from(list(IonType)), outer).map(
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
            st.tuples(st.lists(children, max_size=5), outer).map(
                lambda a: IonPyList.from_value(IonType.LIST, a[0], a[1])
            ),
            st.tuples(st.lists(children, max_size=5), outer).map(
                lambda a: IonPyList.from_value(IonType.SEXP, a[0], a[1])
            ),
            st.tuples(st.lists(st.tuples(texts, children), max_size=6), outer).map(as_struct),
        )

    return st.recursive(scalars, containers, max_leaves=25)
