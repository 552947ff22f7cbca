"""Aggregations over a window: what to compute, and the accumulators that compute it.

``count`` counts events; ``count_distinct(field)`` counts distinct non-null values; ``sum``,
``avg``, ``min`` and ``max`` work on numeric fields (Ion ``int``, ``decimal`` and finite ``float``,
all as exact :class:`~decimal.Decimal`). Like SQL, a null or missing field is ignored by every
aggregation but ``count``, and ``sum``/``avg``/``min``/``max`` of no values is ``None``.

Accumulators serialise to JSON-able lists (decimals as strings, sets sorted) so that window state
can be checkpointed, and merge (session windows). Window state also keeps each event's values
(:meth:`Aggregate.dump_value`), so that the partial windows of several shards can be united exactly
even when an event is in two of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from qldbstream.api import ConfigurationError

__all__ = [
    "Aggregate",
    "Kind",
    "Value",
    "avg_of",
    "count",
    "count_distinct",
    "max_of",
    "min_of",
    "parse_aggregates",
    "sum_of",
]

#: An aggregate's result.
Value = int | Decimal | None

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$")


class Kind(StrEnum):
    COUNT = "count"
    COUNT_DISTINCT = "count_distinct"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"

    @property
    def numeric(self) -> bool:
        return self not in (Kind.COUNT, Kind.COUNT_DISTINCT)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One output column of a query: ``name = kind(field)``."""

    name: str
    kind: Kind
    #: A dotted path into the revision's data (``amount``, ``address.city``); ``None`` for ``count``.
    field: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(f"aggregate name {self.name!r} must be an identifier")
        if self.kind is Kind.COUNT:
            if self.field is not None:
                raise ConfigurationError(f"aggregate {self.name}: count takes no field")
        elif self.field is None or not _FIELD.match(self.field):
            raise ConfigurationError(
                f"aggregate {self.name}: {self.kind} needs a field path, not {self.field!r}"
            )

    def spec(self) -> str:
        return f"{self.name}={self.kind}" + (f"({self.field})" if self.field else "")

    # --- accumulators: a JSON-able list, updated in place -------------------------------------
    def new(self) -> list[Any]:
        if self.kind is Kind.COUNT:
            return [0]
        if self.kind is Kind.COUNT_DISTINCT:
            return [set()]
        if self.kind is Kind.AVG:
            return [Decimal(0), 0]
        return [None]

    def add(self, acc: list[Any], value: Any) -> None:
        """Add one event's value (already extracted: a canonical string or a Decimal, or None)."""
        kind = self.kind
        if kind is Kind.COUNT:
            acc[0] += 1
        elif value is None:
            return
        elif kind is Kind.COUNT_DISTINCT:
            acc[0].add(value)
        elif kind is Kind.SUM:
            acc[0] = value if acc[0] is None else acc[0] + value
        elif kind is Kind.AVG:
            acc[0] += value
            acc[1] += 1
        elif kind is Kind.MIN:
            acc[0] = value if acc[0] is None or value < acc[0] else acc[0]
        else:
            acc[0] = value if acc[0] is None or value > acc[0] else acc[0]

    def merge(self, acc: list[Any], other: list[Any]) -> None:
        kind = self.kind
        if kind is Kind.COUNT:
            acc[0] += other[0]
        elif kind is Kind.COUNT_DISTINCT:
            acc[0] |= other[0]
        elif kind is Kind.AVG:
            acc[0] += other[0]
            acc[1] += other[1]
        elif other[0] is not None:
            self.add(acc, other[0])

    def result(self, acc: list[Any]) -> Value:
        kind = self.kind
        if kind is Kind.COUNT:
            return int(acc[0])
        if kind is Kind.COUNT_DISTINCT:
            return len(acc[0])
        if kind is Kind.AVG:
            return None if acc[1] == 0 else acc[0] / acc[1]
        value: Decimal | None = acc[0]
        return value

    def dump(self, acc: list[Any]) -> list[Any]:
        if self.kind is Kind.COUNT_DISTINCT:
            return [sorted(acc[0])]
        if self.kind is Kind.AVG:
            return [str(acc[0]), acc[1]]
        if self.kind is Kind.COUNT:
            return list(acc)
        return [None if acc[0] is None else str(acc[0])]

    # --- one event's value, as window state keeps it per event key (JSON-able) ----------------
    def dump_value(self, value: Any) -> str | None:
        """An event's extracted value as text (``None`` stays ``None``; ``count`` keeps nothing)."""
        return None if value is None or self.kind is Kind.COUNT else str(value)

    def load_value(self, raw: str | None) -> Any:
        if raw is None or self.kind is Kind.COUNT:
            return None
        return raw if self.kind is Kind.COUNT_DISTINCT else Decimal(raw)

    def load(self, raw: list[Any]) -> list[Any]:
        if self.kind is Kind.COUNT_DISTINCT:
            return [set(raw[0])]
        if self.kind is Kind.AVG:
            return [Decimal(raw[0]), int(raw[1])]
        if self.kind is Kind.COUNT:
            return [int(raw[0])]
        return [None if raw[0] is None else Decimal(raw[0])]


def count(name: str = "count") -> Aggregate:
    return Aggregate(name, Kind.COUNT)


def count_distinct(name: str, field: str) -> Aggregate:
    return Aggregate(name, Kind.COUNT_DISTINCT, field)


def sum_of(name: str, field: str) -> Aggregate:
    return Aggregate(name, Kind.SUM, field)


def avg_of(name: str, field: str) -> Aggregate:
    return Aggregate(name, Kind.AVG, field)


def min_of(name: str, field: str) -> Aggregate:
    return Aggregate(name, Kind.MIN, field)


def max_of(name: str, field: str) -> Aggregate:
    return Aggregate(name, Kind.MAX, field)


_ITEM = re.compile(r"^\s*(\w+)\s*=\s*(\w+)\s*(?:\(\s*([^()\s]*)\s*\))?\s*$")


def parse_aggregates(text: str) -> tuple[Aggregate, ...]:
    """``n=count, accounts=count_distinct(accountId), total=sum(amount)`` → aggregates, in order."""
    out: list[Aggregate] = []
    for item in (part for part in text.split(",") if part.strip()):
        m = _ITEM.match(item)
        if m is None:
            raise ConfigurationError(
                f"aggregate {item.strip()!r}: expected NAME=FUNCTION or NAME=FUNCTION(field)"
            )
        name, function, field = m.group(1), m.group(2).lower(), m.group(3) or None
        try:
            kind = Kind(function)
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise ConfigurationError(
                f"aggregate {name}: unknown function {function!r} (known: {known})"
            ) from None
        out.append(Aggregate(name, kind, field))
    names = [a.name for a in out]
    if not out:
        raise ConfigurationError("aggregates: at least one is needed, e.g. n=count")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"aggregates: a name is used twice in {names}")
    return tuple(out)
