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

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
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
from qldbstream_handlers.fraud.evaluation import Evaluation, Rule
from qldbstream_handlers.fraud.events import (
    TransactionEvent,
    event_from_revision,
    parse_duration_ms,
)
from qldbstream_handlers.fraud.rcf import RandomCutForest
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


class FraudHandler(Evaluation, Handler):
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

    # --- shard ends (the watermark itself: :mod:`.evaluation`) -------------------------------
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


def _arrival_ms(record: JournalRecord) -> int | None:
    """When the record's Kinesis record reached the stream (epoch ms), if known."""
    user = record.user_record
    arrival = user.parent.approximate_arrival_timestamp if user is not None else None
    return None if arrival is None else int(arrival * 1000)
