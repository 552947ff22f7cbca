"""Fraud rules: a high-value threshold, and "N events matching a predicate within T" window rules.

**High value** (:class:`HighValueRule`) looks at one transaction: ``amount >= threshold`` (a
threshold per currency, or a default). It needs no other event, so it is evaluated as soon as
the transaction arrives.

**Window rules** (:class:`WindowRule`) look at a **sliding event-time window** ending at each
transaction: the account's transactions with ``time >= t - window`` up to and including the one
at ``t``, in the handler's total order, that match the rule's predicate. The rule fires at a
transaction (which must itself match) when one of its limits is crossed - ``count >= 5``,
``sum > 5000`` - and the transactions in the window become the alert's **evidence**. Evidence is
*consumed*: those transactions are not counted again by the same rule, so one burst gives one
alert, not one per transaction after the fifth (as ``MATCH_RECOGNIZE … AFTER MATCH SKIP PAST
LAST ROW`` does). The seed's ``pattern_matching`` and velocity limits are both window rules::

    count >= 5 within 5m where amount < 10          # rapid_small_transactions (the seed)
    count > 10 or sum > 5000 within 10m              # velocity

Window rules are evaluated when the event-time watermark has passed the transaction (see
:mod:`qldbstream_handlers.fraud.handler`), in the total order, so the result does not depend on
delivery order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from qldbstream.errors import ConfigurationError
from qldbstream_handlers.fraud.events import (
    EventKey,
    TransactionEvent,
    parse_conditions,
    parse_duration_ms,
)

__all__ = ["HighValueRule", "Limit", "WindowMatch", "WindowRule", "parse_window_rule"]

Predicate = Callable[[TransactionEvent], bool]


@dataclass(frozen=True, slots=True)
class HighValueRule:
    """``amount >= threshold``; ``per_currency`` thresholds win over ``default`` (``None``: none)."""

    default: Decimal | None = Decimal("10000")
    per_currency: Mapping[str, Decimal] = field(default_factory=dict)
    name: str = "high_value"

    def threshold(self, currency: str | None) -> Decimal | None:
        if currency is not None and currency.upper() in self.per_currency:
            return self.per_currency[currency.upper()]
        return self.default

    def score(self, event: TransactionEvent) -> float | None:
        """``amount / threshold`` when the rule fires on ``event``, else ``None``."""
        limit = self.threshold(event.currency)
        if limit is None or event.amount is None or event.amount < limit:
            return None
        return float(event.amount / limit) if limit > 0 else float(event.amount)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a window rule: ``count >= 5``, ``sum > 5000``."""

    aggregate: Literal["count", "sum"]
    op: Literal[">=", ">"]
    value: Decimal

    def crossed(self, count: int, total: Decimal) -> bool:
        actual = Decimal(count) if self.aggregate == "count" else total
        return actual >= self.value if self.op == ">=" else actual > self.value

    def ratio(self, count: int, total: Decimal) -> float:
        actual = Decimal(count) if self.aggregate == "count" else total
        return float(actual / self.value) if self.value > 0 else float(actual)

    def __str__(self) -> str:
        return f"{self.aggregate} {self.op} {self.value}"


@dataclass(frozen=True, slots=True)
class WindowMatch:
    """A window rule fired: the evidence (in event order), its count and sum, the score."""

    evidence: tuple[TransactionEvent, ...]
    count: int
    total: Decimal
    score: float


@dataclass(frozen=True)
class WindowRule:
    """Fires when the transactions matching ``where`` within ``window_ms`` cross a limit."""

    name: str
    window_ms: int
    limits: tuple[Limit, ...]
    where: Predicate | None = None
    #: how the rule was written (settings text or the Python predicate's name), for docs and logs
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ConfigurationError(f"fraud handler: rule name {self.name!r} must be lower_snake_case")
        if self.window_ms < 0 or not self.limits:
            raise ConfigurationError(f"fraud handler: rule {self.name}: needs a window >= 0 and a limit")

    def matches(self, event: TransactionEvent) -> bool:
        return self.where is None or bool(self.where(event))

    def evaluate(
        self, history: Sequence[TransactionEvent], index: int, consumed: set[EventKey]
    ) -> WindowMatch | None:
        """Evaluate the window ending at ``history[index]`` (``history`` in the total order)."""
        event = history[index]
        if event.key in consumed or not self.matches(event):
            return None
        start = event.time_ms - self.window_ms
        window: list[TransactionEvent] = []
        j = index
        while j >= 0 and history[j].time_ms >= start:
            candidate = history[j]
            if candidate.key not in consumed and self.matches(candidate):
                window.append(candidate)
            j -= 1
        window.reverse()
        count = len(window)
        total = sum((e.amount or Decimal(0) for e in window), Decimal(0))
        crossed = [limit for limit in self.limits if limit.crossed(count, total)]
        if not crossed:
            return None
        score = max(limit.ratio(count, total) for limit in crossed)
        return WindowMatch(tuple(window), count, total, score)


_RULE = re.compile(r"^\s*(?P<limits>.+?)\s+within\s+(?P<window>\S+)(?:\s+where\s+(?P<where>.+?))?\s*$", re.I)
_LIMIT = re.compile(r"^\s*(count|sum)\s*(>=|>)\s*(\S+)\s*$", re.I)


def parse_window_rule(name: str, text: str) -> WindowRule:
    """``"count >= 5 within 5m where amount < 10"`` → a :class:`WindowRule` named ``name``."""
    what = f"rule {name}"
    match = _RULE.match(text)
    if not match:
        raise ConfigurationError(
            f"fraud handler: {what}: expected '<count|sum> <>=|>> N [or …] within <duration> "
            f"[where <conditions>]', not {text!r}"
        )
    limits: list[Limit] = []
    for part in re.split(r"\s+or\s+", match.group("limits"), flags=re.I):
        m = _LIMIT.match(part)
        if not m:
            raise ConfigurationError(
                f"fraud handler: {what}: bad limit {part!r} (e.g. count >= 5, sum > 500)"
            )
        try:
            value = Decimal(m.group(3))
        except InvalidOperation:
            raise ConfigurationError(f"fraud handler: {what}: {m.group(3)!r} is not a number") from None
        if value < 0 or not value.is_finite():
            raise ConfigurationError(f"fraud handler: {what}: a limit must be a non-negative number")
        limits.append(Limit(m.group(1).lower(), m.group(2), value))  # type: ignore[arg-type]
    conditions = parse_conditions(match.group("where"), what) if match.group("where") else ()

    def where(event: TransactionEvent) -> bool:
        return all(c(event) for c in conditions)

    window = parse_duration_ms(match.group("window"), f"{what} window")
    return WindowRule(name, window, tuple(limits), where if conditions else None, text.strip())
