"""Transaction events: what the fraud handler keeps of a ``Transactions`` revision, and predicates on it.

A :class:`TransactionEvent` is one inserted transaction reduced to plain, JSON-able values: its
identity (``documentId``, ``version``), its **event time** (the revision's ``txTime`` in epoch
milliseconds), the account, the amount (an exact :class:`~decimal.Decimal`), the currency, a
category (``merchantCategory``, or ``type:<type>`` when there is no merchant) and every top-level
scalar field of the document (for predicates). Events have a total order, ``(time, documentId,
version)``, so that every evaluation is the same whatever order the stream delivered them in.

Predicates (:class:`Condition`, :func:`parse_conditions`) are written as text in settings::

    amount < 10
    amount >= 500 and merchantCategory in (5815, 5816, 5999)
    type == WIRE_OUT and channel ~ "^on"

Operators: ``<``, ``<=``, ``>``, ``>=``, ``==`` (or ``=``), ``!=``, ``in (a, b, …)`` and ``~``
(regular expression search). Numbers compare as decimals; text compares as text; a missing
field or a type mismatch never matches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from amazon.ion.core import IonType

from qldbstream.api import ConfigurationError, RevisionDetails
from qldbstream_handlers.times import epoch_ms

__all__ = [
    "Condition",
    "EventKey",
    "FieldMap",
    "Scalar",
    "TransactionEvent",
    "epoch_ms",
    "event_from_revision",
    "parse_conditions",
    "parse_duration_ms",
    "scalar_of",
]

#: A field value as the fraud handler keeps it.
Scalar = str | int | float | bool | Decimal | None
#: ``(documentId, version)``: a revision's identity, as in the alert's evidence.
EventKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class FieldMap:
    """Where the handler finds what it needs in a document (the settings' ``*_field`` keys)."""

    account: str = "accountId"
    amount: str = "amount"
    currency: str = "currency"
    category: str = "merchantCategory"
    type: str = "type"


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    """One inserted transaction, as plain values (see the module docstring)."""

    account_id: str
    document_id: str
    version: int
    time_ms: int
    amount: Decimal | None
    currency: str | None
    category: str
    fields: Mapping[str, Scalar] = field(default_factory=dict)

    @property
    def key(self) -> EventKey:
        return (self.document_id, self.version)

    @property
    def order(self) -> tuple[int, str, int]:
        """The total order every evaluation uses: event time, then identity."""
        return (self.time_ms, self.document_id, self.version)

    def to_json(self) -> list[Any]:
        return [
            self.account_id,
            self.document_id,
            self.version,
            self.time_ms,
            None if self.amount is None else str(self.amount),
            self.currency,
            self.category,
            {k: _encode(v) for k, v in self.fields.items()},
        ]

    @classmethod
    def from_json(cls, row: list[Any]) -> TransactionEvent:
        account, doc, version, time_ms, amount, currency, category, fields = row
        return cls(
            account,
            doc,
            int(version),
            int(time_ms),
            None if amount is None else Decimal(amount),
            currency,
            category,
            {k: _decode(v) for k, v in fields.items()},
        )


def _encode(value: Scalar) -> Any:
    return {"$decimal": str(value)} if isinstance(value, Decimal) else value


def _decode(value: Any) -> Scalar:
    if isinstance(value, dict):
        return Decimal(value["$decimal"])
    return value  # type: ignore[no-any-return]


def scalar_of(value: Any) -> tuple[bool, Scalar]:
    """``(True, plain value)`` for an Ion scalar (typed nulls give ``None``), ``(False, None)`` else."""
    if value is None or type(value).__name__ == "IonPyNull":
        return True, None
    if isinstance(value, bool) or getattr(value, "ion_type", None) is IonType.BOOL:
        return True, bool(value)
    if isinstance(value, Decimal):
        return True, Decimal(value)
    if isinstance(value, int):
        return True, int(value)
    if isinstance(value, float):
        return True, float(value)
    if isinstance(value, str):
        return True, str(value)
    if isinstance(value, datetime):
        return True, value.isoformat()
    text = getattr(value, "text", None)  # an Ion symbol
    if isinstance(text, str):
        return True, text
    return False, None


def _as_decimal(value: Scalar) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else Decimal(str(value))
    return None


def event_from_revision(revision: RevisionDetails, fields: FieldMap) -> TransactionEvent | None:
    """The event for a live revision, or ``None`` when it has no data or no account."""
    data = revision.data
    if data is None or not hasattr(data, "get"):
        return None
    ok, account = scalar_of(data.get(fields.account))
    if not ok or account is None or isinstance(account, bool):
        return None
    scalars: dict[str, Scalar] = {}
    for name in data:
        ok, value = scalar_of(data.get(name))
        if ok:
            scalars[str(name)] = value
    amount = _as_decimal(scalars.get(fields.amount))
    currency = scalars.get(fields.currency)
    category = scalars.get(fields.category)
    if category is None:
        kind = scalars.get(fields.type)
        category = f"{fields.type}:{kind}" if kind is not None else "none"
    return TransactionEvent(
        str(account),
        revision.document_id,
        revision.version,
        epoch_ms(revision.tx_time),
        amount,
        None if currency is None else str(currency),
        str(category),
        scalars,
    )


# --- durations ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str, what: str) -> int:
    """``"300"`` or ``"300s"``, ``"5m"``, ``"1.5h"``, ``"250ms"``, ``"7d"`` → milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(
            f"fraud handler: {what} must be a duration like 300s, 5m or 1h, not {text!r}"
        )
    return round(float(match.group(1)) * _UNITS[match.group(2) or "s"])


# --- conditions -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op><=|>=|==|!=|<|>|=|~|\(|\)|,)
      | (?P<word>[^\s<>=!~(),"']+)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _literal(token: tuple[str, str]) -> Scalar:
    kind, text = token
    if kind == "str":
        return bytes(text[1:-1], "utf-8").decode("unicode_escape")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return text


@dataclass(frozen=True, slots=True)
class Condition:
    """``field op value``; see the module docstring for the operators."""

    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]

    def __call__(self, event: TransactionEvent) -> bool:
        actual = event.fields.get(self.field)
        if self.op == "in":
            assert isinstance(self.value, tuple)
            return any(_equal(actual, v) for v in self.value)
        if self.op == "~":
            return isinstance(actual, str) and re.search(str(self.value), actual) is not None
        if self.op in ("==", "!="):
            return _equal(actual, self.value) == (self.op == "==")  # type: ignore[arg-type]
        number, limit = _as_decimal(actual), _as_decimal(self.value)  # type: ignore[arg-type]
        if number is not None and limit is not None:
            return _COMPARE[self.op](number, limit)
        if isinstance(actual, str) and isinstance(self.value, str):
            return _COMPARE[self.op](actual, self.value)
        return False

    def __str__(self) -> str:
        value = f"({', '.join(map(str, self.value))})" if isinstance(self.value, tuple) else self.value
        return f"{self.field} {self.op} {value}"


def _equal(actual: Scalar, expected: Scalar) -> bool:
    a, b = _as_decimal(actual), _as_decimal(expected)
    if a is not None and b is not None:
        return a == b
    if isinstance(actual, str) or isinstance(expected, str):
        return str(actual) == str(expected) if actual is not None and expected is not None else False
    return actual == expected


def parse_conditions(text: str, what: str) -> tuple[Condition, ...]:
    """``"amount < 10 and type == CARD_PAYMENT"`` → conditions (all must hold)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ConfigurationError(f"fraud handler: {what}: cannot read {text[pos:]!r}")
        kind = match.lastgroup or "word"
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    conditions: list[Condition] = []
    i = 0

    def fail(reason: str) -> ConfigurationError:
        return ConfigurationError(f"fraud handler: {what}: {reason} in {text!r}")

    while i < len(tokens):
        if len(tokens) - i < 3 or tokens[i][0] != "word":
            raise fail("expected 'field op value'")
        name, (okind, op) = tokens[i][1], tokens[i + 1]
        i += 2
        if okind == "word" and op.lower() == "in":
            if tokens[i] != ("op", "("):
                raise fail("'in' needs a list such as (a, b)")
            values: list[Scalar] = []
            i += 1
            while i < len(tokens) and tokens[i] != ("op", ")"):
                if tokens[i] != ("op", ","):
                    values.append(_literal(tokens[i]))
                i += 1
            if i >= len(tokens) or not values:
                raise fail("unclosed or empty list")
            conditions.append(Condition(name, "in", tuple(values)))
            i += 1
        elif okind == "op" and op in (*_COMPARE, "=", "~"):
            if i >= len(tokens) or tokens[i][0] == "op":
                raise fail(f"{op!r} needs a value")
            value = _literal(tokens[i])
            if op == "~":
                try:
                    re.compile(str(value))
                except re.error as exc:
                    raise fail(f"bad regular expression ({exc})") from None
            conditions.append(Condition(name, "==" if op == "=" else op, value))
            i += 1
        else:
            raise fail(f"unknown operator {op!r}")
        if i < len(tokens):
            if tokens[i][0] != "word" or tokens[i][1].lower() != "and":
                raise fail("conditions are joined with 'and'")
            i += 1
            if i >= len(tokens):
                raise fail("nothing after 'and'")
    if not conditions:
        raise fail("no condition")
    return tuple(conditions)
