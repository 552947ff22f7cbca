"""The fraud handler: per-account rules and anomaly scores on ``Transactions`` inserts, in event time.

What it reads: live inserts (version 0) of the configured table. Deletes (a reversed payment) do
not undo the attempt and are not delivered to it; redacted inserts have no data and are counted
(``fraud_events{outcome=redacted}``) and skipped; updates are not transactions and are ignored.

**Event time, watermark, lateness.** Every rule works on the revision's ``txTime``. Each shard's
*progress* is the newest event time read from it (shared by every consumer through the state
store); the **watermark** is the smallest progress of the shards that are not done, minus
``allowed_lateness`` (the disorder tolerated *within* a shard). A shard read far behind the others
holds the watermark back instead of its transactions arriving late.

* *High value* needs no other event: it is evaluated when the transaction arrives.
* *Window rules* (velocity, count patterns) and the *anomaly score* are evaluated for a transaction
  once the watermark has passed it, account by account, in the total order ``(txTime,
  documentId, version)``; *sequence rules* (``MATCH_RECOGNIZE``, the seed's pattern) decide a
  match attempt once no row that could join it can still arrive. So the result is the same
  whatever the delivery order, shard interleaving or duplication. The price is latency.
* No window rule or pattern is evaluated before ``min_shards`` shards delivered transactions.
* A transaction older than one its account has already evaluated arrived *too late*
  (``fraud_events{outcome=too_late}``: disorder within a shard beyond ``allowed_lateness``, or a
  shard first seen after the others had advanced - set ``min_shards``): window rules evaluate it at
  once, against what is there; decided sequence attempts are not revisited.
* **Bounded streams.** CONTROL ``COMPLETED`` (one shard) marks that shard done. Another shard is
  done when the runtime releases it (the worker at the end of its run) or, in AWS Lambda, when a
  tumbling processing window closes for it after ``COMPLETED`` arrived (``window_closed``): Lambda
  has then delivered every record of that shard. Once the stream completed and every shard is done
  or released, everything still waiting is evaluated. ``drain_on_completed`` evaluates everything
  at ``COMPLETED`` instead (exact only when ``COMPLETED`` is read after every other shard's
  records); :meth:`FraudHandler.drain` does it on demand.

**Restarts.** State lives in a :class:`~qldbstream_handlers.fraud.state.StateStore` and is written
in :meth:`FraudHandler.flush`, after the alerts of the batch were published and before the
pipeline moves the checkpoint (:mod:`~qldbstream_handlers.fraud.state` explains why this is
enough). The anomaly forest has no state of its own: a score is a pure function of the account's
kept transactions (:mod:`~qldbstream_handlers.fraud.rcf`), which the store holds, so after a restart
it is rebuilt exactly.

**Alerts** are buffered during ``handle_batch`` and published in ``flush`` to every sink (the
in-process bus, SQS, SNS); a sink that fails makes ``flush`` raise, the pipeline retries and then
halts the shard, and the next flush sends the alert again to the sinks that did not have it yet.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from qldbstream.api import (
    ConfigurationError,
    ControlRecord,
    Handler,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    RetryableError,
    RevisionDetails,
    SetupContext,
)
from qldbstream_handlers.fraud.alerts import (
    Alert,
    AlertBus,
    AlertSink,
    BusSink,
    SnsAlertSink,
    SqsAlertSink,
    default_bus,
)
from qldbstream_handlers.fraud.events import (
    TransactionEvent,
    event_from_revision,
    parse_duration_ms,
)
from qldbstream_handlers.fraud.rcf import FEATURES, RandomCutForest, features
from qldbstream_handlers.fraud.rules import Limit, SequenceRule, WindowRule
from qldbstream_handlers.fraud.settings import FraudSettings, parse_settings
from qldbstream_handlers.fraud.state import (
    AccountState,
    DynamoDBStateStore,
    HandlerMeta,
    InMemoryStateStore,
    StateStore,
)
from qldbstream_handlers.times import window_time_ms

__all__ = ["FraudHandler"]

log = logging.getLogger("qldbstream.handler.fraud")
P = TypeVar("P", bound=Callable[[TransactionEvent], bool])
_MAX_CONFLICTS = 10
#: state written under optimistic concurrency (a revision per key)
V = TypeVar("V", AccountState, HandlerMeta)
#: the watermark once every shard is done: everything is evaluated
END_OF_INPUT = 2**62
Rule = WindowRule | SequenceRule


class FraudHandler(Handler):
    """See the module docstring. ``settings`` is the handler's own settings dict.

    Not a :class:`~qldbstream.api.Router`: it scores a batch as a whole (windows and sequences
    over every insert of the batch, state read once per batch, alerts published in ``flush``)
    and takes CONTROL ``COMPLETED`` too, so per-record routes would not fit.
    """

    name = "fraud"
    #: every insert is a transaction to evaluate, also one that arrives after its update
    late_policy = "deliver-late"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        store: StateStore | None = None,
        sinks: Sequence[AlertSink] | None = None,
        bus: AlertBus | None = None,
        clients: Callable[[str], Any] | None = None,
    ) -> None:
        self.settings: FraudSettings = parse_settings(settings)
        self.bus = bus if bus is not None else default_bus
        self.rules: list[Rule] = list(self.settings.rules)
        a = self.settings.anomaly
        self.forest = RandomCutForest(a.trees, a.sample_size, a.seed) if a is not None else None
        self._clients = clients
        self._store = store
        self._sinks = list(sinks) if sinks is not None else None
        self._metrics: Metrics = NullMetrics()
        self._accounts: OrderedDict[str, AccountState] = OrderedDict()
        self._meta: HandlerMeta | None = None
        self._meta_dirty = False
        self._outbox: list[Alert] = []
        #: sink name -> ids of the outbox's alerts it already accepted (a flush retried after a failure)
        self._sent: dict[str, set[str]] = {}

    # --- custom rules (Python API) -------------------------------------------------------
    def add_rule(self, rule: Rule) -> None:
        """Add a window or sequence rule (evaluated after the configured ones)."""
        if any(r.name == rule.name for r in self.rules) or rule.name in ("high_value", "anomaly"):
            raise ConfigurationError(f"fraud handler: a rule named {rule.name!r} already exists")
        self.rules.append(rule)

    def add_pattern(
        self,
        name: str,
        predicate: Callable[[TransactionEvent], bool],
        *,
        within: str | float | timedelta,
        count: int | None = None,
        total: Decimal | int | str | None = None,
    ) -> WindowRule:
        """Fire when ``count`` (``>=``) transactions matching ``predicate``, or a ``total`` amount
        (``>=``), fall within ``within`` (``"5m"``, seconds, or a timedelta) for one account."""
        if isinstance(within, timedelta):
            window = round(within.total_seconds() * 1000)
        elif isinstance(within, str):
            window = parse_duration_ms(within, f"rule {name} window")
        else:
            window = round(float(within) * 1000)
        limits = []
        if count is not None:
            limits.append(Limit("count", ">=", Decimal(count)))
        if total is not None:
            limits.append(Limit("sum", ">=", Decimal(total)))
        description = getattr(predicate, "__qualname__", repr(predicate))
        rule = WindowRule(name, window, tuple(limits), predicate, description)
        self.add_rule(rule)
        return rule

    def add_sequence(
        self,
        name: str,
        predicate: Callable[[TransactionEvent], bool],
        *,
        within: str | float | timedelta,
        at_least: int,
        consecutive: bool = False,
    ) -> SequenceRule:
        """``MATCH_RECOGNIZE`` pattern: at least ``at_least`` transactions matching ``predicate``,
        the last less than ``within`` after the first (``consecutive``: with no other transaction
        of the account between them), greedy, skip past last row (see :mod:`.rules`)."""
        if isinstance(within, timedelta):
            window = round(within.total_seconds() * 1000)
        elif isinstance(within, str):
            window = parse_duration_ms(within, f"rule {name} window")
        else:
            window = round(float(within) * 1000)
        description = getattr(predicate, "__qualname__", repr(predicate))
        rule = SequenceRule(name, window, at_least, predicate, consecutive, description)
        self.add_rule(rule)
        return rule

    def pattern(
        self,
        name: str,
        *,
        within: str | float | timedelta,
        count: int | None = None,
        total: Decimal | int | str | None = None,
    ) -> Callable[[P], P]:
        """Decorator form of :meth:`add_pattern`; returns the predicate unchanged."""

        def register(predicate: P) -> P:
            self.add_pattern(name, predicate, within=within, count=count, total=total)
            return predicate

        return register

    # --- services -------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        if self._clients is not None:
            return self._clients(service)
        from qldbstream.api.aws import aws_client

        return aws_client(service, region_name=self.settings.region, endpoint_url=self.settings.endpoint_url)

    @property
    def store(self) -> StateStore:
        if self._store is None:
            spec = self.settings.state_store
            if spec == "memory":
                self._store = InMemoryStateStore()
            else:
                self._store = DynamoDBStateStore(
                    self._client("dynamodb"),
                    spec.split(":", 1)[1],
                    ttl_seconds=self.settings.state_ttl_seconds,
                )
        return self._store

    @property
    def sinks(self) -> list[AlertSink]:
        if self._sinks is None:
            sinks: list[AlertSink] = []
            for spec in self.settings.sinks:
                if spec == "bus":
                    sinks.append(BusSink(self.bus))
                elif spec.startswith("sqs:"):
                    sinks.append(SqsAlertSink(self._client("sqs"), spec[4:]))
                else:
                    sinks.append(SnsAlertSink(self._client("sns"), spec[4:]))
            self._sinks = sinks
        return self._sinks

    # --- Handler --------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self._metrics = ctx.metrics
        _ = self.store, self.sinks  # build them now: a bad setting fails at start-up
        ctx.logger.info(
            "fraud handler: rules %s, anomaly %s, lateness %ss, sinks %s, state %s",
            ["high_value"] * (self.settings.high_value is not None) + [r.name for r in self.rules],
            "on" if self.forest else "off",
            self.settings.allowed_lateness_ms / 1000,
            [s.name for s in self.sinks],
            self.settings.state_store,
        )

    def wants(self, record: JournalRecord) -> bool:
        if isinstance(record, RevisionDetails):
            return record.table_name == self.settings.table and record.version == 0 and not record.is_deleted
        return isinstance(record, ControlRecord) and record.control_record_type == "COMPLETED"

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        self._metrics = ctx.metrics
        shard = ctx.shard_id or "-"
        meta = self._refresh_meta()
        events: list[TransactionEvent] = []
        drain = False
        for record in records:
            if isinstance(record, ControlRecord):
                meta.done.add(shard)
                meta.completed = True
                arrival = _arrival_ms(record)
                if arrival is not None:
                    meta.completed_at = max(meta.completed_at or arrival, arrival)
                self._meta_dirty = True
                drain = drain or self.settings.drain_on_completed
                log.info("fraud: CONTROL COMPLETED on %s: the shard is done", shard)
            elif isinstance(record, RevisionDetails):
                if record.is_redacted:
                    self._metrics.incr("fraud_events", outcome="redacted")
                    continue
                event = event_from_revision(record, self.settings.fields)
                if event is None:
                    self._metrics.incr("fraud_events", outcome="invalid")
                    log.warning("fraud: %r has no %s: skipped", record, self.settings.fields.account)
                    continue
                events.append(event)
        self._load_accounts(e.account_id for e in events)
        for event in events:
            state = self._accounts[event.account_id]
            if not state.add(event):
                self._metrics.incr("fraud_events", outcome="duplicate")
                continue
            self._high_value(state, event)
            last = state.last_evaluated()
            decided = any(
                event.order <= cursor
                for rule in self.rules
                if isinstance(rule, SequenceRule) and (cursor := state.cursors.get(rule.name)) is not None
            )
            if last is not None and event.order < last:
                self._metrics.incr("fraud_events", outcome="too_late")
                self._evaluate(state, [event])
            elif decided:
                self._metrics.incr("fraud_events", outcome="too_late")
            else:
                self._metrics.incr("fraud_events", outcome="accepted")
            earliest = meta.pending.get(event.account_id, event.time_ms)
            meta.pending[event.account_id] = min(earliest, event.time_ms)
            meta.max_time_ms = max(meta.max_time_ms or event.time_ms, event.time_ms)
            meta.progress[shard] = max(meta.progress.get(shard, event.time_ms), event.time_ms)
            self._meta_dirty = True
        self._advance(drain=drain)

    def drain(self) -> list[Alert]:
        """Evaluate everything still waiting for the watermark; return the alerts now in the outbox
        (they are published by the next :meth:`flush`)."""
        self._load_meta()
        self._advance(drain=True)
        return list(self._outbox)

    def flush(self, ctx: HandlerContext) -> None:
        """1. publish the outbox to every sink, 2. write the changed state - then the checkpoint may move."""
        self._metrics = ctx.metrics
        for alert in self._outbox:
            for sink in self.sinks:
                sent = self._sent.setdefault(sink.name, set())
                if alert.id not in sent:
                    sink.publish(alert)
                    sent.add(alert.id)
                    self._metrics.incr("fraud_alerts_published", sink=sink.name.split(":", 1)[0])
        self._outbox.clear()
        self._sent.clear()
        for state in [s for s in self._accounts.values() if s.dirty]:
            self._save_account(state)
        if self._meta is not None and self._meta_dirty:
            self._save_meta(self._meta)
        excess = len(self._accounts) - self.settings.max_accounts
        if excess > 0:  # forget the least recently used clean accounts (the store has them)
            pending = self._meta_pending()
            clean = [a for a, s in self._accounts.items() if not s.dirty and a not in pending]
            for account in clean[:excess]:
                del self._accounts[account]

    # --- the watermark and shard ends -------------------------------------------------------
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

    def window_closed(self, window: Any, ctx: HandlerContext) -> None:
        """AWS Lambda closed a tumbling (processing-time) window of a shard: every record that
        reached the shard before ``window.end`` was delivered. That end is the shard's progress;
        after CONTROL ``COMPLETED`` arrived it also means the shard is done. Evaluates what that
        allows and publishes it now (the hook runs after the invocation's flush)."""
        if not getattr(window, "final", False):
            return
        self._metrics = ctx.metrics
        shard = getattr(window, "shard_id", None) or ctx.shard_id or "-"
        end = window_time_ms(getattr(window, "end", None))
        meta = self._refresh_meta()
        if end is not None and shard in meta.progress and end > meta.progress[shard]:
            meta.progress[shard] = end
            self._meta_dirty = True
        self._advance(drain=False)
        self.flush(ctx)

    def shard_released(self, shard_id: str) -> None:
        """The runtime gave the shard up (the worker's end of run, a KCL shutdown or lease loss).
        It still holds the watermark at its progress - a new owner may read on - but once the
        stream completed and every shard is done or released, everything is evaluated."""
        try:
            meta = self._refresh_meta()
            if shard_id in meta.progress:
                meta.released[shard_id] = meta.progress[shard_id]
                self._meta_dirty = True
            self._advance(drain=False)
            self.flush(HandlerContext(self.name, shard_id, metrics=self._metrics))
        except Exception:  # nothing to hold back here: what waits stays in the state store
            log.exception("fraud: evaluating after the release of %s failed", shard_id)

    # --- evaluation -----------------------------------------------------------------------
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

    # --- state ----------------------------------------------------------------------------
    def _meta_key(self) -> str:
        return f"{self.name}#meta"

    def _account_key(self, account: str) -> str:
        return f"{self.name}#acct#{account}"

    def _meta_pending(self) -> dict[str, int]:
        return self._meta.pending if self._meta is not None else {}

    def _load_meta(self) -> HandlerMeta:
        if self._meta is None:
            stored = self.store.get([self._meta_key()]).get(self._meta_key())
            self._meta = HandlerMeta.from_json(stored[1], stored[0]) if stored else HandlerMeta()
        return self._meta

    def _refresh_meta(self) -> HandlerMeta:
        """The shared handler state, with what other consumers stored since (their shards' progress)."""
        meta = self._load_meta()
        stored = self.store.get([self._meta_key()]).get(self._meta_key())
        if stored is not None and stored[0] != meta.revision:
            meta.merge(HandlerMeta.from_json(stored[1], stored[0]))
            meta.revision = stored[0]
        return meta

    def _refresh_accounts(self, accounts: Sequence[str]) -> None:
        """Merge in what other consumers stored for these accounts (before evaluating them)."""
        if not accounts:
            return
        stored = self.store.get([self._account_key(a) for a in accounts])
        for account in accounts:
            item = stored.get(self._account_key(account))
            state = self._accounts[account]
            if item is not None and item[0] != state.revision:
                state.merge(AccountState.from_json(item[1], item[0]))
                state.revision = item[0]

    def _load_accounts(self, accounts: Iterable[str]) -> None:
        missing = sorted({a for a in accounts if a not in self._accounts})
        if missing:
            stored = self.store.get([self._account_key(a) for a in missing])
            for account in missing:
                item = stored.get(self._account_key(account))
                self._accounts[account] = (
                    AccountState.from_json(item[1], item[0]) if item else AccountState(account)
                )
        for account in accounts:
            self._accounts.move_to_end(account)

    def _save_account(self, state: AccountState) -> None:
        def merged() -> None:
            waiting = [e.time_ms for e in state.pending()]
            if waiting:  # a concurrent writer's events that still wait for the watermark
                meta = self._load_meta()
                earliest = min([*waiting, meta.pending.get(state.account_id, waiting[0])])
                meta.pending[state.account_id] = earliest
                self._meta_dirty = True

        self._save(
            self._account_key(state.account_id), state, merged, f"fraud state for account {state.account_id}"
        )
        state.dirty = False

    def _save_meta(self, meta: HandlerMeta) -> None:
        self._save(self._meta_key(), meta, lambda: None, "fraud handler state")
        self._meta_dirty = False

    def _save(self, key: str, value: V, merged: Callable[[], None], what: str) -> None:
        """Write ``value`` at its revision; on a concurrent write, merge the stored copy in and retry."""
        for _ in range(_MAX_CONFLICTS):
            revision = self.store.put(key, value.to_json(), value.revision)
            if revision is not None:
                value.revision = revision
                return
            self._metrics.incr("fraud_state_conflicts")
            stored = self.store.get([key]).get(key)
            if stored is None:
                value.revision = 0
                continue
            value.merge(type(value).from_json(stored[1], stored[0]))
            value.revision = stored[0]
            merged()
        raise RetryableError(f"{what}: too many concurrent writers")


def _arrival_ms(record: JournalRecord) -> int | None:
    """When the record's Kinesis record reached the stream (epoch ms), if known."""
    user = record.user_record
    arrival = user.parent.approximate_arrival_timestamp if user is not None else None
    return None if arrival is None else int(arrival * 1000)
