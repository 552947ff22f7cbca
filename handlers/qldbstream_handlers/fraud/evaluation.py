"""The fraud handler's evaluation in event time: the watermark, then window rules, sequence rules,
the anomaly score and the high-value rule per account, and the alerts they raise.

:class:`Evaluation` is a base of :class:`~qldbstream_handlers.fraud.handler.FraudHandler`; the
module docstring of :mod:`~qldbstream_handlers.fraud.handler` explains event time, the watermark
and lateness. Alerts go to the handler's outbox, which ``flush`` publishes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from qldbstream_handlers.fraud.alerts import Alert
from qldbstream_handlers.fraud.events import TransactionEvent
from qldbstream_handlers.fraud.persistence import StatePersistence
from qldbstream_handlers.fraud.rcf import FEATURES, RandomCutForest, features
from qldbstream_handlers.fraud.rules import SequenceRule, WindowRule
from qldbstream_handlers.fraud.settings import FraudSettings
from qldbstream_handlers.fraud.state import AccountState, HandlerMeta

__all__ = ["END_OF_INPUT", "Evaluation", "Rule"]

#: the watermark once every shard is done: everything is evaluated
END_OF_INPUT = 2**62
Rule = WindowRule | SequenceRule


class Evaluation(StatePersistence):
    """Evaluates what the watermark allows; the handler provides the settings, rules and outbox."""

    settings: FraudSettings
    rules: list[Rule]
    forest: RandomCutForest | None
    _outbox: list[Alert]

    def watermark(self) -> int | None:
        """The event time up to which every transaction has arrived (``None``: not known yet)."""
        meta = self._load_meta()
        if len(meta.progress) < self.settings.min_shards:
            return None  # a shard not seen yet may still bring older transactions
        done = {s for s, t in meta.progress.items() if s in meta.done or self._read_past_completion(meta, t)}
        finished = all(s in done or meta.released.get(s, t - 1) >= t for s, t in meta.progress.items())
        if meta.completed and finished:
            return END_OF_INPUT  # the stream is complete and every shard was read to its end
        live = [t for s, t in meta.progress.items() if s not in done]
        return min(live) - self.settings.allowed_lateness_ms if live else None

    @staticmethod
    def _read_past_completion(meta: HandlerMeta, progress: int) -> bool:
        """A shard whose progress passed the arrival of CONTROL ``COMPLETED``: only a Lambda
        processing window closing after it gets there (every record's ``txTime`` is before its own
        arrival, which is before ``COMPLETED``'s), and then every record of the shard was read."""
        return meta.completed_at is not None and progress > meta.completed_at

    def _advance(self, *, drain: bool) -> None:
        meta = self._load_meta()
        watermark = END_OF_INPUT if drain else self.watermark()
        if watermark is None:
            self._metrics.gauge("fraud_pending_accounts", float(len(meta.pending)))
            return
        due = sorted(a for a, t in meta.pending.items() if t <= watermark)
        self._load_accounts(due)
        self._refresh_accounts(due)
        reference = watermark if watermark < END_OF_INPUT else (meta.max_time_ms or 0)
        for account in due:
            state = self._accounts[account]
            ready = [e for e in state.pending() if e.time_ms <= watermark]
            self._evaluate(state, ready)
            waiting = [e.time_ms for e in state.pending()]
            next_attempt = self._sequences(state, watermark)
            if next_attempt is not None:
                waiting.append(next_attempt)
            if waiting:
                meta.pending[account] = min(waiting)
            else:
                meta.pending.pop(account, None)
            self._meta_dirty = True
            self._prune(state, reference, meta.pending.get(account))
        self._metrics.gauge("fraud_pending_accounts", float(len(meta.pending)))

    def _sequences(self, state: AccountState, watermark: int) -> int | None:
        """Decide the sequence rules' attempts the watermark allows; the next attempt's due time."""
        due: int | None = None
        history = state.history()
        for rule in self.rules:
            if not isinstance(rule, SequenceRule):
                continue
            scan = rule.scan(history, state.cursors.get(rule.name), watermark)
            for match in scan.matches:
                first, last = match.evidence[0], match.evidence[-1]
                details = {
                    "count": match.count,
                    "sum": str(match.total),
                    # the seed's measure: COUNT(*) * AVG(amount)
                    "patternScore": str(match.total),
                    "currency": last.currency,
                    "windowSeconds": rule.within_ms / 1000,
                    "firstEventTimeMs": first.time_ms,
                    "condition": rule.description,
                }
                self._raise_match(state, rule.name, match, last.time_ms, details)
            if scan.cursor is not None and scan.cursor != state.cursors.get(rule.name):
                state.cursors[rule.name] = scan.cursor
                state.dirty = True
            if scan.due_ms is not None:
                due = scan.due_ms if due is None else min(due, scan.due_ms)
        return due

    def _raise_match(
        self, state: AccountState, rule: str, match: Any, time_ms: int, details: dict[str, Any]
    ) -> None:
        """An alert for a rule's match: its score, its evidence (the matched rows), at ``time_ms``."""
        evidence = [e.key for e in match.evidence]
        self._raise(state, Alert.create(rule, state.account_id, match.score, evidence, time_ms, details))

    def _retention_ms(self) -> int:
        return max((r.window_ms for r in self.rules), default=0) + self.settings.allowed_lateness_ms

    def _prune(self, state: AccountState, watermark: int, earliest_pending: int | None) -> None:
        reference = watermark if earliest_pending is None else min(watermark, earliest_pending)
        keep = (self.forest.sample_size if self.forest is not None else 0) + 1
        state.prune(reference - self._retention_ms(), keep)

    def _evaluate(self, state: AccountState, events: Iterable[TransactionEvent]) -> None:
        """Window rules and the anomaly score for ``events`` of one account, in the total order."""
        for event in sorted(events, key=lambda e: e.order):
            history = state.history()
            index = bisect.bisect_left([e.order for e in history], event.order)
            for rule in self.rules:
                if not isinstance(rule, WindowRule):
                    continue
                consumed = state.consumed.setdefault(rule.name, set())
                match = rule.evaluate(history, index, consumed)
                if match is None:
                    continue
                consumed.update(e.key for e in match.evidence)
                details = {
                    "count": match.count,
                    "sum": str(match.total),
                    "currency": event.currency,
                    "windowSeconds": rule.window_ms / 1000,
                    "condition": rule.description,
                }
                self._raise_match(state, rule.name, match, event.time_ms, details)
            self._score(state, history, index, event)
            state.evaluated.add(event.key)
            state.dirty = True

    def _score(
        self, state: AccountState, history: list[TransactionEvent], index: int, event: TransactionEvent
    ) -> None:
        anomaly = self.settings.anomaly
        if self.forest is None or anomaly is None:
            return
        if index < anomaly.min_points:
            self._metrics.incr("fraud_anomaly_warmup")
            return
        sample, point = features(history, index, self.forest.sample_size)
        result = self.forest.score(sample, point, f"{state.account_id}/{event.document_id}/{event.version}")
        self._metrics.observe("fraud_anomaly_score", result.score)
        if result.score >= anomaly.threshold:
            details = {
                "topFeature": result.top_feature,
                "direction": result.attribution[result.top_feature][1],
                "features": {f: round(v, 6) for f, v in zip(FEATURES, point, strict=True)},
                "sampleSize": len(sample),
                "threshold": anomaly.threshold,
            }
            self._raise(
                state,
                Alert.create(
                    "anomaly",
                    state.account_id,
                    result.score,
                    [event.key],
                    event.time_ms,
                    details,
                    result.explanation(),
                ),
            )

    def _high_value(self, state: AccountState, event: TransactionEvent) -> None:
        rule = self.settings.high_value
        score = rule.score(event) if rule is not None else None
        if rule is None or score is None:
            return
        limit = rule.threshold(event.currency)
        details = {"amount": str(event.amount), "currency": event.currency, "threshold": str(limit)}
        self._raise(
            state, Alert.create(rule.name, state.account_id, score, [event.key], event.time_ms, details)
        )

    def _raise(self, state: AccountState, alert: Alert) -> None:
        if alert.id in state.alerts:
            self._metrics.incr("fraud_alerts_suppressed", rule=alert.rule)
            return
        state.alerts[alert.id] = alert.event_time_ms
        state.dirty = True
        self._outbox.append(alert)
        self._metrics.incr("fraud_alerts", rule=alert.rule)
