"""A query: which revisions, which window, which group, which aggregates - and the events it takes.

A revision becomes an :class:`Event` of a query when its table and operation match and the ``where``
predicate holds on its data. The event's time is the revision's ``txTime`` (the commit time QLDB
assigned: event time, not arrival time), its key ``documentId#version`` (what makes a redelivery
recognisable), its group the canonical text of the ``group_by`` field, and its values the fields
the aggregates read.

``where`` is a Python callable on the document (Python API) or a small expression (settings)::

    type = CARD_PAYMENT and amount >= 100
    channel in (online, mobile) and merchant != null

Comparisons are numeric when the literal is a number, textual otherwise; a missing field makes a
comparison false (``!= null`` tests presence).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from qldbstream.api import ConfigurationError, PoisonRecordError, RevisionDetails, operation_of
from qldbstream_handlers.analytics.aggregates import Aggregate, Kind, count, count_distinct, sum_of
from qldbstream_handlers.analytics.windows import Duration, Tumbling, Window, duration_ms
from qldbstream_handlers.times import epoch_ms

__all__ = [
    "OPERATIONS",
    "TRANSACTION_VELOCITY",
    "Event",
    "Predicate",
    "Query",
    "canonical",
    "epoch_ms",
    "field_value",
    "parse_where",
]

#: Document data -> keep it?
Predicate = Callable[[Mapping[str, Any]], bool]
OPERATIONS = frozenset({"insert", "update"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Event:
    """One revision as a query sees it."""

    time: int
    key: str
    group: str | None
    values: tuple[Any, ...]


def field_value(data: Mapping[str, Any] | None, path: str) -> Any:
    """The value at a dotted ``path`` in ``data``, or ``None`` when any step is missing or null."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return None if _is_null(value) else value


def _is_null(value: Any) -> bool:
    return value is None or type(value).__name__ == "IonPyNull"


def canonical(value: Any) -> str | None:
    """The text a value groups and counts as distinct by: strings and symbols as their text."""
    if _is_null(value):
        return None
    text = getattr(value, "text", None)  # an Ion symbol
    if isinstance(text, str):
        return text
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or getattr(value, "ion_type", None) == 1:
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | Decimal | float):
        return str(value)
    from amazon.ion import simpleion

    rendered: str = simpleion.dumps(value, binary=False)
    return rendered.removeprefix("$ion_1_0 ")


def _number(value: Any) -> Decimal | None:
    if _is_null(value):
        return None
    ion_type = getattr(value, "ion_type", None)
    if isinstance(value, bool) or ion_type == 1:
        raise ValueError("a bool is not a number")
    if isinstance(value, int):
        return Decimal(int(value))
    if isinstance(value, Decimal):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(float(value)))
    raise ValueError(f"{type(value).__name__} {value!r} is not a finite number")


@dataclass(frozen=True)
class Query:
    """What to aggregate: the Python API's unit (settings build one, see :mod:`.settings`)."""

    name: str
    window: Window
    aggregates: tuple[Aggregate, ...]
    #: Table names to take (``None``: every table).
    tables: frozenset[str] | None = None
    #: Operations to take: ``insert``, ``update`` (deletes and redacted revisions carry no data).
    operations: frozenset[str] = OPERATIONS
    group_by: str | None = None
    where: Predicate | None = None
    #: How long after a window fired late events still correct it (then they are dropped).
    allowed_lateness: Duration = 0
    #: How far behind the newest event time the watermark trails (tolerated disorder).
    out_of_orderness: Duration = 0
    #: Text of ``where`` when it came from settings (for fingerprints and messages).
    where_text: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(f"query name {self.name!r}: letters, digits, _ and - only")
        if not self.aggregates:
            raise ConfigurationError(f"query {self.name}: at least one aggregate is needed")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"query {self.name}: aggregate names must be unique, got {names}")
        unknown = self.operations - OPERATIONS
        if unknown or not self.operations:
            raise ConfigurationError(
                f"query {self.name}: operations must be among insert, update, not {sorted(unknown)}"
            )
        object.__setattr__(self, "allowed_lateness", duration_ms(self.allowed_lateness, "allowed_lateness"))
        object.__setattr__(self, "out_of_orderness", duration_ms(self.out_of_orderness, "out_of_orderness"))

    @property
    def lateness_ms(self) -> int:
        return duration_ms(self.allowed_lateness)  # already an int after __post_init__

    @property
    def delay_ms(self) -> int:
        return duration_ms(self.out_of_orderness)

    def fingerprint(self) -> str:
        """What window state depends on: a restart with a different definition must not reuse it."""
        aggs = ",".join(a.spec() for a in self.aggregates)
        return f"{self.window.spec()}|{aggs}|{self.group_by or ''}"

    def matches(self, revision: RevisionDetails) -> bool:
        """Table and operation (cheap; no data parsed)."""
        if self.tables is not None and revision.table_name not in self.tables:
            return False
        return operation_of(revision) in self.operations

    def event(self, revision: RevisionDetails) -> Event | None:
        """The revision as this query's event, ``None`` when ``where`` rejects it.

        Raises :class:`PoisonRecordError` when a numeric aggregate's field holds a non-number.
        """
        data = revision.data
        if self.where is not None and not self.where(data):
            return None
        values: list[Any] = []
        for agg in self.aggregates:
            if agg.kind is Kind.COUNT or agg.field is None:
                values.append(None)
                continue
            raw = field_value(data, agg.field)
            if agg.kind is Kind.COUNT_DISTINCT:
                values.append(canonical(raw))
                continue
            try:
                values.append(_number(raw))
            except ValueError as exc:
                raise PoisonRecordError(
                    f"query {self.name}: {agg.kind}({agg.field}) of {revision.table_name} "
                    f"{revision.document_id} v{revision.version}: {exc}",
                    revision.position,
                ) from None
        group = canonical(field_value(data, self.group_by)) if self.group_by else None
        return Event(
            epoch_ms(revision.tx_time), f"{revision.document_id}#{revision.version}", group, tuple(values)
        )


#: The seed's Kinesis Analytics ``transaction_velocity``: per minute, on ``Transactions``, the
#: number of transactions, of distinct accounts, and their total amount.
TRANSACTION_VELOCITY = Query(
    "transaction_velocity",
    Tumbling("1m"),
    (
        count("transaction_count"),
        count_distinct("unique_accounts", "accountId"),
        sum_of("total_amount", "amount"),
    ),
    tables=frozenset({"Transactions"}),
    operations=frozenset({"insert"}),
)


# --- the where expression -------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'[^']*'|"[^"]*")|(?P<op><=|>=|!=|=|<|>|\(|\)|,)|(?P<word>[^\s'"=<>!(),]+))"""
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ConfigurationError(f"where {text!r}: cannot read it from position {pos}")
        kind = m.lastgroup or "word"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(kind: str, token: str) -> Any:
    if kind == "str":
        return token[1:-1]
    lowered = token.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return Decimal(token)
    except ArithmeticError:
        return token


def _compare(value: Any, op: str, literal: Any) -> bool:
    if literal is None:
        return (value is None) == (op == "=") if op in ("=", "!=") else False
    if value is None:
        return False
    if isinstance(literal, bool):
        actual: Any = canonical(value) == ("true" if literal else "false")
        return actual if op == "=" else (not actual if op == "!=" else False)
    if isinstance(literal, Decimal):
        try:
            left: Any = _number(value)
        except ValueError:
            return False
        right: Any = literal
    else:
        left, right = canonical(value), literal
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def parse_where(text: str) -> Predicate:
    """Compile ``field op literal [and ...]`` (ops ``= != < <= > >= in``, ``not in``) to a predicate."""
    tokens = _tokens(text)
    conditions: list[Callable[[Mapping[str, Any]], bool]] = []
    i = 0

    def need(j: int) -> tuple[str, str]:
        if j >= len(tokens):
            raise ConfigurationError(f"where {text!r}: ends too early")
        return tokens[j]

    while True:
        kind, path = need(i)
        if kind != "word":
            raise ConfigurationError(f"where {text!r}: expected a field name, got {path!r}")
        kind, op = need(i + 1)
        negate = False
        if kind == "word" and op.lower() == "not":
            negate, i = True, i + 1
            kind, op = need(i + 1)
        if kind == "word" and op.lower() == "in":
            if need(i + 2)[1] != "(":
                raise ConfigurationError(f"where {text!r}: 'in' needs a list in parentheses")
            j, items = i + 3, []
            while True:
                k, tok = need(j)
                items.append(_literal(k, tok))
                sep = need(j + 1)[1]
                j += 2
                if sep == ")":
                    break
                if sep != ",":
                    raise ConfigurationError(f"where {text!r}: expected ',' or ')' in a list")
            conditions.append(_in(path, tuple(items), negate))
            i = j
        elif kind == "op" and op in ("=", "!=", "<", "<=", ">", ">=") and not negate:
            k, tok = need(i + 2)
            literal = _literal(k, tok)
            conditions.append(_comparison(path, op, literal))
            i += 3
        else:
            raise ConfigurationError(f"where {text!r}: unknown operator {op!r}")
        if i == len(tokens):
            break
        if tokens[i][1].lower() != "and":
            raise ConfigurationError(f"where {text!r}: expected 'and', got {tokens[i][1]!r}")
        i += 1
    return lambda data: all(c(data) for c in conditions)


def _comparison(path: str, op: str, literal: Any) -> Callable[[Mapping[str, Any]], bool]:
    return lambda data: _compare(field_value(data, path), op, literal)


def _in(path: str, items: tuple[Any, ...], negate: bool) -> Callable[[Mapping[str, Any]], bool]:
    def test(data: Mapping[str, Any]) -> bool:
        value = field_value(data, path)
        found = any(_compare(value, "=", item) for item in items)
        return value is not None and found != negate

    return test
