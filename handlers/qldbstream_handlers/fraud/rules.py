"""Fraud rules: a high-value threshold, "N events matching a predicate within T" window rules, and
``MATCH_RECOGNIZE`` sequence rules (the seed's ``SMALL_TXN{5,} WITHIN INTERVAL '5' MINUTE``).

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

**Sequence rules** (:class:`SequenceRule`) are SQL row pattern matching over each account's
transactions in event time, ``PARTITION BY account ORDER BY (txTime, documentId, version)``,
``ONE ROW PER MATCH``, ``AFTER MATCH SKIP PAST LAST ROW``, with one pattern variable ``X`` defined
by the rule's predicate::

    consecutive >= 5 within 5m where amount < 10   PATTERN (X{5,})         WITHIN INTERVAL '5' MINUTE
    sequence >= 5 within 5m where amount < 10      PATTERN (X (O* X){4,})  WITHIN INTERVAL '5' MINUTE
                                                   (O: any row that is not an X)

A match attempt starts at the first row not yet consumed that is an ``X``; the quantifier is
greedy, so the match takes every following ``X`` (``consecutive``: up to the first row that is not
one; ``sequence``: skipping those rows, which are not part of the match) whose time is less than
``within`` after the first row's (``WITHIN`` as Flink defines it: last - first < interval). If it
holds at least ``N`` rows it is a match - one alert, its rows the evidence - and the next attempt
starts after its last row; otherwise the next attempt starts at the next row. An attempt is
*decided* once no row that could join it can still arrive: the watermark has reached ``first +
within - 1 ms`` (or, for ``consecutive``, passed a row that ends the run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from qldbstream.api import ConfigurationError
from qldbstream_handlers.fraud.events import (
    EventKey,
    TransactionEvent,
    parse_conditions,
    parse_duration_ms,
)

__all__ = [
    "HighValueRule",
    "Limit",
    "SequenceMatch",
    "SequenceRule",
    "WindowMatch",
    "WindowRule",
    "parse_pattern",
    "parse_sequence_rule",
    "parse_window_rule",
]

#: An event's place in the total order: ``(txTime, documentId, version)``.
Order = tuple[int, str, int]

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


@dataclass(frozen=True, slots=True)
class SequenceMatch:
    """A sequence rule matched: its rows (the evidence, in event order), their count and sum."""

    evidence: tuple[TransactionEvent, ...]
    count: int
    total: Decimal
    score: float


@dataclass(frozen=True, slots=True)
class SequenceScan:
    """What :meth:`SequenceRule.scan` decided: the matches, where the next attempt starts, and
    the event time at which the watermark may decide it (``None``: no attempt is pending)."""

    matches: tuple[SequenceMatch, ...]
    cursor: Order | None
    due_ms: int | None


@dataclass(frozen=True)
class SequenceRule:
    """``MATCH_RECOGNIZE`` row pattern ``X{min_count,}`` (``consecutive``) or ``X (O* X){min_count-1,}``
    within ``within_ms``, greedy, skip past last row (see the module docstring)."""

    name: str
    within_ms: int
    min_count: int
    where: Predicate | None = None
    consecutive: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ConfigurationError(f"fraud handler: rule name {self.name!r} must be lower_snake_case")
        if self.within_ms <= 0 or self.min_count < 1:
            raise ConfigurationError(
                f"fraud handler: rule {self.name}: needs a positive window and at least one row"
            )

    @property
    def window_ms(self) -> int:
        """How far back a decision looks (for the state's retention)."""
        return self.within_ms

    def matches(self, event: TransactionEvent) -> bool:
        return self.where is None or bool(self.where(event))

    def scan(self, history: Sequence[TransactionEvent], cursor: Order | None, watermark: int) -> SequenceScan:
        """Decide every attempt the ``watermark`` allows, starting after ``cursor`` (the last row
        of the decided part; ``None``: from the beginning). ``history`` is in the total order and
        holds every row after the cursor that has arrived."""
        n = len(history)
        i = 0
        if cursor is not None:
            while i < n and history[i].order <= cursor:
                i += 1
        found: list[SequenceMatch] = []
        while i < n:
            first = history[i]
            if first.time_ms > watermark:
                return SequenceScan(tuple(found), cursor, first.time_ms)  # a row may still come before it
            if not self.matches(first):
                cursor = first.order
                i += 1
                continue
            limit = first.time_ms + self.within_ms  # rows of the match: time < limit
            rows = [first]
            breaker: TransactionEvent | None = None
            j = i + 1
            while j < n and history[j].time_ms < limit:
                row = history[j]
                if self.matches(row):
                    rows.append(row)
                elif self.consecutive:
                    breaker = row
                    break
                j += 1
            decided = limit - 1 <= watermark or (breaker is not None and breaker.time_ms <= watermark)
            if not decided:
                due = limit - 1 if breaker is None else min(limit - 1, breaker.time_ms)
                return SequenceScan(tuple(found), cursor, due)
            if len(rows) >= self.min_count:
                total = sum((e.amount or Decimal(0) for e in rows), Decimal(0))
                found.append(SequenceMatch(tuple(rows), len(rows), total, len(rows) / self.min_count))
                cursor = rows[-1].order
                last = rows[-1]
                while i < n and history[i].order <= last.order:
                    i += 1
            else:
                cursor = first.order
                i += 1
        return SequenceScan(tuple(found), cursor, None)


_SEQUENCE = re.compile(
    r"^\s*(?P<kind>sequence|consecutive)\s*>=\s*(?P<count>\d+)\s+within\s+(?P<window>\S+)"
    r"(?:\s+where\s+(?P<where>.+?))?\s*$",
    re.I,
)


def parse_sequence_rule(name: str, text: str) -> SequenceRule:
    """``"sequence >= 5 within 5m where amount < 10"`` (or ``consecutive``) → a :class:`SequenceRule`."""
    what = f"rule {name}"
    match = _SEQUENCE.match(text)
    if not match:
        raise ConfigurationError(
            f"fraud handler: {what}: expected '<sequence|consecutive> >= N within <duration> "
            f"[where <conditions>]', not {text!r}"
        )
    conditions = parse_conditions(match.group("where"), what) if match.group("where") else ()

    def where(event: TransactionEvent) -> bool:
        return all(c(event) for c in conditions)

    return SequenceRule(
        name,
        parse_duration_ms(match.group("window"), f"{what} window"),
        int(match.group("count")),
        where if conditions else None,
        match.group("kind").lower() == "consecutive",
        text.strip(),
    )


def parse_pattern(name: str, text: str) -> WindowRule | SequenceRule:
    """A ``pattern_<name>`` setting: a sequence rule (``sequence``/``consecutive >= N ...``) or a
    window rule (``count``/``sum ... within ...``)."""
    if re.match(r"^\s*(sequence|consecutive)\b", text, re.I):
        return parse_sequence_rule(name, text)
    return parse_window_rule(name, text)


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
