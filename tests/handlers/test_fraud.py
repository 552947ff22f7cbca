"""The fraud handler on the simulated bank: alerts equal what the ledger says they must be.

Every expected alert is computed from the simulator's ground truth (``sim.ledger``), not from the
handler: the high-value transactions, the planted small-amount bursts, the velocity windows.
The same bank is then delivered with duplicates, reordered across shards without aggregation,
and processed by a handler that is restarted mid-stream: the alerts must be identical each time.
Time is a fake clock; nothing sleeps; the anomaly forest is seeded.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from qldbstream_handlers.fraud import (
    AccountState,
    Alert,
    AlertBus,
    FraudHandler,
    HandlerMeta,
    InMemoryStateStore,
    TransactionEvent,
    alert_id,
    parse_conditions,
    parse_window_rule,
)
from qldbstream_tools.simulate import (
    DeliveryOptions,
    Simulation,
    SimulationConfig,
    Workload,
    WorkloadMix,
    simulate,
)

from qldbstream.api.handler import HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.plugins import load_handler
from qldbstream.core.dedupe import DedupeStore
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.functional.test_pipeline import FakeTime, MemoryDLQ
from tests.support.streams import batches, kinesis_records

# --- the bank, the oracle, and how the tests drive a pipeline ---------------------------------

#: Few accounts (long histories for the forest), more planted bursts and high-value wires.
WORKLOAD = Workload(
    transactions=400,
    redactions=0,
    mix=WorkloadMix(open_account=2, small_burst=2, high_value=3),
)
SETTINGS = {
    "velocity_window": "10m",
    "velocity_max_count": "8",
    "velocity_max_sum": "30000",
    "allowed_lateness": "2m",
    "anomaly_trees": "20",
    "anomaly_threshold": "8",
    "drain_on_completed": "false",
}
HIGH_VALUE = Decimal("10000")


@cache
def bank(*, shards: int = 1, aggregate: bool = True, duplicates: float = 0.0, reorder: int = 0) -> Simulation:
    """One bank (same seed, same journal) delivered in different ways."""
    return simulate(
        SimulationConfig(
            seed=11,
            workload=WORKLOAD,
            delivery=DeliveryOptions(
                aggregate=aggregate, shards=shards, duplicate_rate=duplicates, reorder_window=reorder
            ),
        )
    )


class Collector:
    """An alert bus with one subscriber that keeps everything it is given."""

    def __init__(self) -> None:
        self.bus = AlertBus()
        self.alerts: list[Alert] = []
        self.bus.subscribe(self.alerts.append)

    def by_rule(self, rule: str) -> list[Alert]:
        return [a for a in self.alerts if a.rule == rule]


Work = list[tuple[str, list[KinesisRecord]]]


def interleaved(sim: Simulation, size: int) -> Work:
    """Each shard's batches, taken round-robin (as workers owning the shards progress together)."""
    per_shard = {shard: batches(records, size) for shard, records in sorted(kinesis_records(sim).items())}
    out: Work = []
    for i in range(max(len(b) for b in per_shard.values())):
        for shard, shard_batches in per_shard.items():
            if i < len(shard_batches):
                out.append((shard, shard_batches[i]))
    return out


def run_pipeline(
    handler: FraudHandler,
    work: Sequence[tuple[str, list[KinesisRecord]]],
    *,
    metrics: InMemoryMetrics | None = None,
    dedupe: DedupeStore | None = None,
    drain: bool = True,
) -> InMemoryMetrics:
    """Process ``work`` through a real pipeline (fake clock), then drain and flush the handler."""
    t = FakeTime()
    metrics = metrics or InMemoryMetrics()
    pipeline = Pipeline(
        [handler],
        dlq=MemoryDLQ(),
        store=dedupe if dedupe is not None else InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1)),
        metrics=metrics,
        clock=t.clock,
        sleep=t.sleep,
    )
    for shard, batch in work:
        result = pipeline.process(shard, batch)
        assert not result.halted, result.halt_reason
        assert result.first_unfinished is None
    if drain:
        handler.drain()
        handler.flush(HandlerContext(handler.name, None, metrics=metrics))
    return metrics


def signature(alerts: Iterable[Alert]) -> set[tuple[Any, ...]]:
    """Everything that must be identical between runs, alert by alert."""
    return {(a.id, a.rule, a.account_id, a.evidence, a.event_time_ms, a.score) for a in alerts}


@dataclass(frozen=True)
class LedgerTx:
    account: str
    document_id: str
    time_ms: int
    amount: Decimal
    merchant_category: Any


def ledger_transactions(sim: Simulation) -> dict[str, list[LedgerTx]]:
    """Each account's visible Transactions inserts (not redacted), in (txTime, documentId) order."""
    out: dict[str, list[LedgerTx]] = {}
    for rev in sim.ledger.revisions:
        if rev.table != "Transactions" or rev.version != 0 or rev.op != "insert" or rev.redacted:
            continue
        data: Any = rev.data
        category = data["merchantCategory"]
        tx = LedgerTx(
            str(data["accountId"]),
            rev.document_id,
            rev.tx_time_ms,
            Decimal(data["amount"]),
            None if type(category).__name__ == "IonPyNull" else int(category),
        )
        out.setdefault(tx.account, []).append(tx)
    for txs in out.values():
        txs.sort(key=lambda t: (t.time_ms, t.document_id))
    return out


Expected = set[tuple[str, frozenset[str], int]]


def expected_window_alerts(
    accounts: Mapping[str, list[LedgerTx]],
    *,
    window_ms: int,
    matches: Callable[[LedgerTx], bool],
    fires: Callable[[int, Decimal], bool],
) -> Expected:
    """``(account, evidence documentIds, event time)`` of every alert a window rule must raise:
    at a matching transaction, the unconsumed matching ones in the window ending there cross a
    limit; they are the evidence, and are consumed."""
    out: Expected = set()
    for account, txs in accounts.items():
        consumed: set[str] = set()
        for i, tx in enumerate(txs):
            if tx.document_id in consumed or not matches(tx):
                continue
            window = [
                t
                for t in txs[: i + 1]
                if t.time_ms >= tx.time_ms - window_ms and matches(t) and t.document_id not in consumed
            ]
            if fires(len(window), sum((t.amount for t in window), Decimal(0))):
                evidence = frozenset(t.document_id for t in window)
                consumed |= evidence
                out.add((account, evidence, tx.time_ms))
    return out


def expected_sequence_alerts(
    accounts: Mapping[str, list[LedgerTx]],
    *,
    within_ms: int,
    at_least: int,
    matches: Callable[[LedgerTx], bool],
) -> Expected:
    """SQL ``MATCH_RECOGNIZE`` per account in ``txTime`` order, ``PATTERN (X (O* X){n-1,})``:
    from the first unconsumed ``X``, greedily every ``X`` less than ``within_ms`` after it (other
    rows skipped); at least ``at_least`` of them is a match (event time: its last row), and the
    next attempt starts after it; otherwise at the next row."""
    out: Expected = set()
    for account, txs in accounts.items():
        i = 0
        while i < len(txs):
            if not matches(txs[i]):
                i += 1
                continue
            rows = [t for t in txs[i:] if t.time_ms - txs[i].time_ms < within_ms and matches(t)]
            if len(rows) >= at_least:
                out.add((account, frozenset(t.document_id for t in rows), rows[-1].time_ms))
                i = txs.index(rows[-1]) + 1
            else:
                i += 1
    return out


def got(alerts: Iterable[Alert]) -> Expected:
    return {(a.account_id, frozenset(d for d, _ in a.evidence), a.event_time_ms) for a in alerts}


@cache
def baseline() -> tuple[Collector, InMemoryMetrics]:
    """One shard, aggregated, in order, no duplicates: the reference run."""
    collector = Collector()
    handler = FraudHandler(SETTINGS, bus=collector.bus)
    metrics = run_pipeline(handler, interleaved(bank(), 50))
    return collector, metrics


# --- alerts against the ledger ------------------------------------------------------------------


def test_high_value_alerts_are_exactly_the_ledgers_high_value_transactions() -> None:
    collector, _ = baseline()
    expected = {(t.account_id, t.document_id) for t in bank().ledger.high_value(HIGH_VALUE)}
    assert len(expected) >= 5
    alerts = collector.by_rule("high_value")
    assert {(a.account_id, a.evidence[0][0]) for a in alerts} == expected
    assert all(len(a.evidence) == 1 and a.score >= 1.0 for a in alerts)
    assert all(Decimal(a.details["amount"]) >= HIGH_VALUE for a in alerts)


def test_pattern_alerts_are_exactly_the_planted_bursts() -> None:
    collector, _ = baseline()
    sim = bank()
    alerts = collector.by_rule("rapid_small_transactions")
    expected = expected_sequence_alerts(
        ledger_transactions(sim), within_ms=300_000, at_least=5, matches=lambda t: t.amount < 10
    )
    assert got(alerts) == expected
    # ground truth: only planted burst payments are under 10, so the alerts are on exactly the
    # accounts with at least five burst payments within five minutes, and all evidence is burst payments
    times = {t.document_id: t.time_ms for txs in ledger_transactions(sim).values() for t in txs}
    burst_times: dict[str, list[int]] = {}
    for burst in sim.ledger.bursts:
        burst_times.setdefault(burst.account_id, []).extend(times[d] for d in burst.document_ids)
    planted = {
        account
        for account, ts in burst_times.items()
        if any(later - first < 300_000 for first, later in zip(sorted(ts), sorted(ts)[4:], strict=False))
    }
    assert len(planted) >= 4
    assert {a.account_id for a in alerts} == planted
    burst_docs = {d for b in sim.ledger.bursts for d in b.document_ids}
    assert {d for a in alerts for d, _ in a.evidence} <= burst_docs
    assert all(len(a.evidence) >= 5 and a.details["count"] == len(a.evidence) for a in alerts)


def test_velocity_alerts_match_a_sliding_window_over_the_ledger() -> None:
    collector, _ = baseline()
    expected = expected_window_alerts(
        ledger_transactions(bank()),
        window_ms=600_000,
        matches=lambda t: True,
        fires=lambda count, total: count > 8 or total > 30_000,
    )
    assert len(expected) >= 3
    assert got(collector.by_rule("velocity")) == expected


def test_anomaly_alerts_carry_an_explanation() -> None:
    collector, metrics = baseline()
    alerts = collector.by_rule("anomaly")
    assert alerts
    for alert in alerts:
        assert alert.score >= 8 and len(alert.evidence) == 1
        assert alert.explanation is not None and alert.top_feature in alert.explanation
        shares = sum(float(f["ATTRIBUTION_SCORE"]) for f in alert.explanation.values())
        assert shares == pytest.approx(alert.score, rel=1e-3)
    assert metrics.total("fraud_alerts", rule="anomaly") == len(alerts)
    assert metrics.total("fraud_events", outcome="accepted") == sum(
        len(v) for v in ledger_transactions(bank()).values()
    )


def test_no_alert_is_published_twice_and_watermark_evaluates_before_the_end() -> None:
    collector, metrics = baseline()
    ids = [a.id for a in collector.alerts]
    assert len(ids) == len(set(ids))
    window_alerts = [a for a in collector.alerts if a.rule != "high_value"]
    # the watermark (2 minutes behind the newest txTime) let most windows close during the stream
    assert metrics.total("fraud_alerts_published") == len(ids)
    last_time = max(t.time_ms for txs in ledger_transactions(bank()).values() for t in txs)
    assert any(a.event_time_ms < last_time - 120_000 for a in window_alerts)


# --- identical under duplicates, reordering and restarts ----------------------------------------


@pytest.mark.parametrize(
    ("delivery", "size"),
    [
        pytest.param({"duplicates": 0.3}, 50, id="duplicates"),
        pytest.param(
            {"shards": 3, "aggregate": False, "reorder": 5, "duplicates": 0.1}, 20, id="reordered-shards"
        ),
    ],
)
def test_alerts_are_identical_under_duplicates_and_reordering(delivery: dict[str, Any], size: int) -> None:
    reference, _ = baseline()
    collector = Collector()
    handler = FraudHandler(SETTINGS, bus=collector.bus)
    metrics = run_pipeline(handler, interleaved(bank(**delivery), size))
    assert signature(collector.alerts) == signature(reference.alerts)
    assert len(collector.alerts) == len(reference.alerts)
    assert metrics.total("fraud_events", outcome="too_late") == 0


def test_mid_stream_restart_raises_each_alert_once() -> None:
    reference, _ = baseline()
    work = interleaved(bank(shards=2, duplicates=0.1), 25)
    store = InMemoryStateStore()
    half = len(work) // 2
    # worker 1: processes the first half (state flushed before each checkpoint) ...
    first = Collector()
    run_pipeline(FraudHandler(SETTINGS, bus=first.bus, store=store), work[:half], drain=False)
    # ... then handles one more batch but crashes before its flush: nothing of it is persisted
    doomed = FraudHandler(SETTINGS, bus=first.bus, store=store)
    shard, batch = work[half]
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode

    records = [decode(u) for kr in batch for u in deaggregate(kr)]
    doomed.handle_batch([r for r in records if doomed.wants(r)], HandlerContext("fraud", shard))
    # worker 2: a new instance over the same state store; the lost dedupe store means the last
    # batches before the crash are delivered again (at least once)
    second = Collector()
    run_pipeline(FraudHandler(SETTINGS, bus=second.bus, store=store), work[half - 4 :])
    assert first.alerts and second.alerts
    assert not {a.id for a in first.alerts} & {a.id for a in second.alerts}
    assert signature(first.alerts + second.alerts) == signature(reference.alerts)


def test_late_events_beyond_the_allowed_lateness_are_counted_and_still_evaluated() -> None:
    collector = Collector()
    handler = FraudHandler({**SETTINGS, "allowed_lateness": "0s", "anomaly": "off"}, bus=collector.bus)
    work = interleaved(bank(), 40)
    metrics = run_pipeline(handler, list(reversed(work)))  # newest first: almost everything is late
    assert metrics.total("fraud_events", outcome="too_late") > 0
    expected = {(t.account_id, t.document_id) for t in bank().ledger.high_value(HIGH_VALUE)}
    assert {(a.account_id, a.evidence[0][0]) for a in collector.by_rule("high_value")} == expected


# --- the anomaly score ---------------------------------------------------------------------------


def test_planted_high_value_transactions_score_higher_than_normal_traffic() -> None:
    collector = Collector()
    # (determinism: the scenario tests above compare every score across deliveries and restarts)
    settings = {**SETTINGS, "anomaly_threshold": "0", "anomaly_trees": "30", "velocity_max_count": "off"}
    handler = FraudHandler({**settings, "velocity_max_sum": "off"}, bus=collector.bus)
    run_pipeline(handler, interleaved(bank(), 50))
    scored = {a.evidence[0][0]: a for a in collector.by_rule("anomaly")}
    high = {t.document_id for t in bank().ledger.high_value(HIGH_VALUE)}
    bursts = {d for b in bank().ledger.bursts for d in b.document_ids}
    planted = [a.score for d, a in scored.items() if d in high]
    normal = [a.score for d, a in scored.items() if d not in high and d not in bursts]
    assert len(planted) >= 5 and len(normal) >= 100
    # with seed 0: the planted wires rank far above ordinary payments
    auc = sum((p > n) + 0.5 * (p == n) for p in planted for n in normal) / (len(planted) * len(normal))
    assert auc >= 0.9
    assert statistics.median(planted) > statistics.quantiles(normal, n=10)[8]  # above the 90th percentile
    # and the explanation names the planted feature: the amount, on the high side
    tops = [(scored[d].top_feature, scored[d].details["direction"]) for d in high if d in scored]
    assert sum(t == ("amount", "HIGH") for t in tops) >= 0.9 * len(tops)


# --- the Python API for custom rules -----------------------------------------------------------


def test_custom_rule_registered_in_python() -> None:
    collector = Collector()
    handler = FraudHandler({**SETTINGS, "anomaly": "off"}, bus=collector.bus)

    @handler.pattern("gift_card_spree", within="5m", count=3)
    def gift_cards(event: TransactionEvent) -> bool:
        return event.fields.get("merchantCategory") in (5815, 5816)

    assert gift_cards.__name__ == "gift_cards"  # the decorator returns the function unchanged
    run_pipeline(handler, interleaved(bank(), 50))
    expected = expected_window_alerts(
        ledger_transactions(bank()),
        window_ms=300_000,
        matches=lambda t: t.merchant_category in (5815, 5816),
        fires=lambda count, _total: count >= 3,
    )
    assert expected
    assert got(collector.by_rule("gift_card_spree")) == expected
    with pytest.raises(ConfigurationError):
        handler.add_pattern("velocity", gift_cards, within=60, count=2)


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": "5"}, "unknown settings"),
        ({"pattern_x": "count >= 5 within forever"}, "duration"),
        ({"pattern_x": "count five within 5m"}, "bad limit"),
        ({"pattern_x": "at least 5 in 5m"}, "expected"),
        ({"pattern_x": "count >= 5 within 5m where amount <"}, "amount"),
        ({"high_value": "lots"}, "not a number"),
        ({"sinks": "kafka:topic"}, "sinks"),
        ({"state_store": "redis"}, "state_store"),
        ({"anomaly_min_points": "50"}, "anomaly_min_points"),
        ({"drain_on_completed": "maybe"}, "true or false"),
        ({"pattern_x": "sequence >= five within 5m"}, "expected"),
        ({"pattern_x": "consecutive >= 5 within never"}, "duration"),
        ({"min_shards": "0"}, "min_shards"),
    ],
)
def test_bad_settings_fail_at_start_up(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FraudHandler(settings)


def test_settings_build_the_rules_and_load_as_a_plugin() -> None:
    handler = load_handler(
        "qldbstream_handlers.fraud:FraudHandler",
        {
            "high_value_gbp": "5000",
            "pattern_rapid_small_transactions": "off",
            "pattern_wires": "sum >= 20000 within 1h where type == WIRE_OUT",
            "velocity_max_count": "off",
        },
    )
    assert isinstance(handler, FraudHandler)
    assert [r.name for r in handler.rules] == ["wires"]
    rule = handler.settings.high_value
    assert rule is not None and rule.threshold("GBP") == 5000 and rule.threshold("EUR") == 10000
    with pytest.raises(ConfigurationError, match="unknown settings"):
        load_handler("qldbstream_handlers.fraud:FraudHandler", {"nope": "1"})


def test_conditions() -> None:
    event = TransactionEvent(
        "AC1",
        "doc",
        0,
        0,
        Decimal("9.50"),
        "GBP",
        "5815",
        {"amount": Decimal("9.50"), "type": "CARD_PAYMENT", "merchantCategory": 5815, "channel": "online"},
    )

    def holds(text: str) -> bool:
        return all(c(event) for c in parse_conditions(text, "test"))

    assert holds("amount < 10 and type == CARD_PAYMENT")
    assert holds("merchantCategory in (5815, 5816) and channel ~ '^on'")
    assert holds("amount >= 9.5 and amount <= 9.50 and type != DEPOSIT")
    assert not holds("amount > 10")
    assert not holds("missing == 1")
    assert not holds("type < 5")  # text against a number never matches
    rule = parse_window_rule("spree", "count >= 2 or sum > 100 within 90s where amount < 10")
    assert rule.window_ms == 90_000 and [str(limit) for limit in rule.limits] == ["count >= 2", "sum > 100"]


# --- alerts, the bus, the state -----------------------------------------------------------------


def test_alert_id_depends_on_rule_account_and_evidence_only() -> None:
    a = Alert.create("r", "AC1", 1.5, [("d1", 0), ("d2", 0)], 1000, {"x": 1})
    b = Alert.create("r", "AC1", 9.9, [("d2", 0), ("d1", 0)], 2000)
    assert a.id == b.id == alert_id("r", "AC1", {("d1", 0), ("d2", 0)})
    assert a.id != Alert.create("r", "AC2", 1.5, [("d1", 0), ("d2", 0)], 1000).id
    assert a.id != Alert.create("s", "AC1", 1.5, [("d1", 0), ("d2", 0)], 1000).id
    assert Alert.from_json(a.to_json()) == a
    assert a.event_time == "1970-01-01T00:00:01.000Z"


def test_alert_bus_delivers_each_id_once_per_subscriber_and_retries_a_failure() -> None:
    bus = AlertBus()
    seen: list[str] = []
    failures = [ConnectionError("case system down")]

    def flaky(alert: Alert) -> None:
        if failures:
            raise failures.pop()
        seen.append(alert.id)

    steady: list[str] = []
    bus.subscribe(lambda alert: steady.append(alert.id))
    unsubscribe = bus.subscribe(flaky)
    alert = Alert.create("r", "AC1", 1.0, [("d", 0)], 0)
    with pytest.raises(ConnectionError):
        bus.publish(alert)
    bus.publish(alert)  # the retry reaches the subscriber that failed, not the other one again
    bus.publish(alert)
    assert steady == [alert.id] and seen == [alert.id]
    unsubscribe()
    bus.publish(Alert.create("r", "AC1", 1.0, [("e", 0)], 0))
    assert seen == [alert.id] and len(steady) == 2


def test_a_failing_sink_keeps_the_alert_for_the_next_flush() -> None:
    class Down:
        name = "down"

        def __init__(self) -> None:
            self.up = False
            self.got: list[str] = []

        def publish(self, alert: Alert) -> None:
            if not self.up:
                raise ConnectionError("sink down")
            self.got.append(alert.id)

    down = Down()
    collector = Collector()
    handler = FraudHandler({**SETTINGS, "anomaly": "off"}, bus=collector.bus)
    handler._sinks = [*handler.sinks, down]
    work = interleaved(bank(), 400)
    t = FakeTime()
    pipeline = Pipeline(
        [handler],
        dlq=MemoryDLQ(),
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=1)),
        clock=t.clock,
        sleep=t.sleep,
    )
    shard, batch = work[0]
    result = pipeline.process(shard, batch)
    assert result.halted and "flush" in result.halt_reason  # the checkpoint did not move
    delivered_once = list(collector.alerts)
    assert delivered_once and not down.got
    down.up = True
    t.now += 120  # the breaker lets the redelivery through
    result = pipeline.process(shard, batch)
    assert not result.halted
    # every alert reached the sink that was down, and the bus, which had the first one, once each
    assert down.got == [a.id for a in collector.alerts]
    assert len(down.got) == len(set(down.got)) > len(delivered_once)


def test_account_state_round_trips_and_merges_as_a_set() -> None:
    def event(doc: str, t: int) -> TransactionEvent:
        return TransactionEvent("AC1", doc, 0, t, Decimal("1.10"), "EUR", "5815", {"amount": Decimal("1.10")})

    a, b = AccountState("AC1"), AccountState("AC1")
    a.add(event("d1", 1))
    a.evaluated.add(("d1", 0))
    a.consumed["r"] = {("d1", 0)}
    a.alerts["x"] = 1
    assert not a.add(event("d1", 1))
    b.add(event("d2", 2))
    copy = AccountState.from_json(a.to_json(), 7)
    assert copy.revision == 7 and copy.to_json() == a.to_json()
    assert copy.events[("d1", 0)].amount == Decimal("1.10")
    copy.merge(b)
    assert [e.document_id for e in copy.history()] == ["d1", "d2"]
    assert copy.evaluated == {("d1", 0)} and copy.pending()[0].document_id == "d2"
    meta = HandlerMeta(10, {"AC1": 5})
    meta.merge(HandlerMeta(20, {"AC1": 3, "AC2": 9}))
    assert (meta.max_time_ms, meta.pending) == (20, {"AC1": 3, "AC2": 9})


def test_concurrent_writers_merge_instead_of_overwriting() -> None:
    store = InMemoryStateStore()
    one = FraudHandler({**SETTINGS, "anomaly": "off"}, store=store, bus=AlertBus())
    two = FraudHandler({**SETTINGS, "anomaly": "off"}, store=store, bus=AlertBus())
    per_shard = kinesis_records(bank(shards=2))
    (s1, r1), (s2, r2) = sorted(per_shard.items())
    metrics = InMemoryMetrics()
    for i in range(max(len(r1), len(r2)) // 20 + 1):  # two workers, one shard each, taking turns
        for handler, shard, records in ((one, s1, r1), (two, s2, r2)):
            batch = records[i * 20 : (i + 1) * 20]
            if batch:
                run_pipeline(handler, [(shard, batch)], metrics=metrics, drain=False)
    assert metrics.total("fraud_state_conflicts") > 0
    stored = {
        key.split("#", 2)[2]: AccountState.from_json(body, rev)
        for key, (rev, body) in store.items.items()
        if "#acct#" in key
    }
    kept = {doc for state in stored.values() for doc, _ in state.events}
    # every transaction of the last retention period made it into the shared store
    accounts = ledger_transactions(bank())
    last = max(t.time_ms for txs in accounts.values() for t in txs)
    recent = {t.document_id for txs in accounts.values() for t in txs if t.time_ms >= last - 600_000}
    assert recent <= kept
