"""The fraud handler on a messy four-shard stream: duplicates, reordering, inserts arriving after
their updates (flagged late), shards read far apart, CONTROL ``COMPLETED`` on one shard only - in
the shapes of the three runtimes (one worker reading every shard, two KCL workers, one Lambda
container per shard with tumbling-window final invocations).

Every alert must be raised exactly when it should, once. The expected alerts are computed here
from the simulator's ledger in plain Python: high-value transactions, the seed's pattern with SQL
``MATCH_RECOGNIZE`` semantics (greedy, one match per attempt, skip past last row, ``WITHIN`` as
last - first < 5 minutes, in ``txTime`` order) and the velocity windows. The anomaly forest is off:
its only oracle is itself (``test_fraud.py`` checks it is identical across deliveries).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from qldbstream_handlers.fraud import Alert, AlertBus, FraudHandler, InMemoryStateStore
from qldbstream_tools.simulate import DeliveryOptions as Options
from qldbstream_tools.simulate import Simulation, SimulationConfig, Workload, WorkloadMix, simulate

from qldbstream.api.handler import HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.decode import ControlRecord, JournalRecord
from qldbstream.runtimes.aws_lambda import TumblingWindow
from tests.handlers.messy import (
    Batch,
    Delivery,
    completed_shard,
    deliver,
    round_robin,
    shard_by_shard,
    shard_records,
)

SETTINGS = {"anomaly": "off"}  # everything else as shipped: 60 s lateness, min_shards 1, no drain
MINUTE = 60_000


@pytest.fixture(scope="module")
def messy() -> Simulation:
    """Few accounts (long histories), many planted bursts; four shards, 30 % duplicates, reordered."""
    return simulate(
        SimulationConfig(
            seed=17,
            workload=Workload(
                transactions=500, redactions=0, mix=WorkloadMix(open_account=2, small_burst=3, high_value=2)
            ),
            delivery=Options(aggregate=False, shards=4, duplicate_rate=0.3, reorder_window=6),
        )
    )


# --- the oracle: plain Python over the ledger ----------------------------------------------------


@dataclass(frozen=True)
class Tx:
    account: str
    document_id: str
    time_ms: int
    amount: Decimal


def ledger_transactions(sim: Simulation) -> dict[str, list[Tx]]:
    out: dict[str, list[Tx]] = defaultdict(list)
    for rev in sim.ledger.revisions:
        if rev.table == "Transactions" and rev.op == "insert" and rev.version == 0 and not rev.redacted:
            data: Any = rev.data
            out[str(data["accountId"])].append(
                Tx(str(data["accountId"]), rev.document_id, rev.tx_time_ms, Decimal(data["amount"]))
            )
    for txs in out.values():
        txs.sort(key=lambda t: (t.time_ms, t.document_id))
    return dict(out)


Expected = set[tuple[str, str, frozenset[str]]]


def match_recognize(
    accounts: dict[str, list[Tx]],
    rule: str,
    is_x: Callable[[Tx], bool],
    *,
    at_least: int,
    within_ms: int,
    consecutive: bool,
) -> Expected:
    """``PARTITION BY account ORDER BY txTime``, ``PATTERN (X{n,})`` (consecutive) or
    ``PATTERN (X (O* X){n-1,})``, ``WITHIN`` last - first < within, greedy, skip past last row."""
    out: Expected = set()
    for account, rows in accounts.items():
        i = 0
        while i < len(rows):
            if not is_x(rows[i]):
                i += 1
                continue
            taken = [i]
            for j in range(i + 1, len(rows)):
                if rows[j].time_ms - rows[i].time_ms >= within_ms:
                    break
                if is_x(rows[j]):
                    taken.append(j)
                elif consecutive:
                    break
            if len(taken) >= at_least:
                out.add((rule, account, frozenset(rows[k].document_id for k in taken)))
                i = taken[-1] + 1
            else:
                i += 1
    return out


def sliding_window(
    accounts: dict[str, list[Tx]], rule: str, *, window_ms: int, fires: Callable[[int, Decimal], bool]
) -> Expected:
    """At each transaction, the unconsumed ones within the window ending there cross a limit."""
    out: Expected = set()
    for account, rows in accounts.items():
        consumed: set[str] = set()
        for i, tx in enumerate(rows):
            if tx.document_id in consumed:
                continue
            window = [
                t
                for t in rows[: i + 1]
                if t.time_ms >= tx.time_ms - window_ms and t.document_id not in consumed
            ]
            if fires(len(window), sum((t.amount for t in window), Decimal(0))):
                evidence = frozenset(t.document_id for t in window)
                consumed |= evidence
                out.add((rule, account, evidence))
    return out


def expected_alerts(sim: Simulation) -> Expected:
    accounts = ledger_transactions(sim)
    high = {
        ("high_value", t.account, frozenset([t.document_id]))
        for txs in accounts.values()
        for t in txs
        if t.amount >= 10_000
    }
    small = match_recognize(
        accounts,
        "rapid_small_transactions",
        lambda t: t.amount < 10,
        at_least=5,
        within_ms=5 * MINUTE,
        consecutive=False,
    )
    velocity = sliding_window(accounts, "velocity", window_ms=10 * MINUTE, fires=lambda n, _total: n > 10)
    return high | small | velocity


# --- harness ---------------------------------------------------------------------------------------


class Recorder:
    """An alert sink that keeps every publication (no de-duplication: repeats must show)."""

    name = "recorder"

    def __init__(self) -> None:
        self.published: list[Alert] = []

    def publish(self, alert: Alert) -> None:
        self.published.append(alert)

    def alerts(self) -> Expected:
        return {(a.rule, a.account_id, frozenset(d for d, _ in a.evidence)) for a in self.published}

    def assert_once(self) -> None:
        repeats = [i for i, n in Counter(a.id for a in self.published).items() if n > 1]
        assert not repeats, f"{len(repeats)} alerts published more than once"


def fraud(recorder: Recorder, store: InMemoryStateStore | None = None, **settings: str) -> FraudHandler:
    return FraudHandler(
        {**SETTINGS, **settings},
        sinks=[recorder],
        store=store if store is not None else InMemoryStateStore(),
        bus=AlertBus(),
    )


def far_apart(per_shard: dict[str, list[JournalRecord]], first: str, size: int) -> list[Batch]:
    """Every shard's first batch (all shards start), then each shard read to its end in turn,
    ``first`` before the others: shards read as far apart as a running worker can be."""
    head = [(s, records[:size]) for s, records in per_shard.items()]
    rest = {s: records[size:] for s, records in per_shard.items()}
    order = [first, *sorted(s for s in per_shard if s != first)]
    return head + shard_by_shard(rest, size, order=order)


def test_the_oracle_finds_planted_bursts_and_every_rule_fires(messy: Simulation) -> None:
    expected = expected_alerts(messy)
    by_rule = Counter(rule for rule, _, _ in expected)
    assert (
        by_rule["high_value"] >= 3 and by_rule["rapid_small_transactions"] >= 5 and by_rule["velocity"] >= 1
    )
    burst_docs = {d for b in messy.ledger.bursts for d in b.document_ids}
    assert all(ev <= burst_docs for rule, _, ev in expected if rule == "rapid_small_transactions")


# --- one consumer reading every shard (the worker) -------------------------------------------------


@pytest.mark.parametrize("order", ["round-robin", "completed-shard-first", "completed-shard-last"])
def test_one_worker_reading_every_shard(messy: Simulation, order: str) -> None:
    per_shard = shard_records(messy)
    completed = completed_shard(per_shard)
    other = sorted(s for s in per_shard if s != completed)[0]
    work = {
        "round-robin": lambda: round_robin(per_shard, 8),
        "completed-shard-first": lambda: far_apart(per_shard, completed, 8),
        "completed-shard-last": lambda: far_apart(per_shard, other, 8),
    }[order]()
    recorder = Recorder()
    h = fraud(recorder)
    metrics = deliver(h, work)
    for shard in per_shard:  # the worker releases every shard when its run ends
        h.shard_released(shard)
    assert recorder.alerts() == expected_alerts(messy)
    recorder.assert_once()
    assert metrics.total("fraud_events", outcome="too_late") == 0
    assert metrics.total("fraud_events", outcome="accepted") == sum(
        len(t) for t in ledger_transactions(messy).values()
    )


def test_shards_read_one_after_the_other_need_min_shards(messy: Simulation) -> None:
    """A shard that has delivered nothing cannot hold the watermark back: ``min_shards`` (the
    stream's shard count) makes the worst order exact too."""
    per_shard = shard_records(messy)
    recorder = Recorder()
    h = fraud(recorder, min_shards="4")
    metrics = deliver(h, shard_by_shard(per_shard, 8, reverse=True))
    for shard in per_shard:
        h.shard_released(shard)
    assert recorder.alerts() == expected_alerts(messy)
    recorder.assert_once()
    assert metrics.total("fraud_events", outcome="too_late") == 0


def test_consecutive_patterns_follow_the_seed_literally(messy: Simulation) -> None:
    """``consecutive``: the seed's ``PATTERN (SMALL_TXN{n,})`` - no other transaction between."""
    per_shard = shard_records(messy)
    recorder = Recorder()
    h = fraud(
        recorder,
        pattern_rapid_small_transactions="off",
        pattern_tight="consecutive >= 3 within 5m where amount < 10",
        velocity_max_count="off",
        high_value="off",
    )
    deliver(h, round_robin(per_shard, 8))
    for shard in per_shard:
        h.shard_released(shard)
    expected = match_recognize(
        ledger_transactions(messy),
        "tight",
        lambda t: t.amount < 10,
        at_least=3,
        within_ms=5 * MINUTE,
        consecutive=True,
    )
    loose = match_recognize(
        ledger_transactions(messy),
        "tight",
        lambda t: t.amount < 10,
        at_least=3,
        within_ms=5 * MINUTE,
        consecutive=False,
    )
    assert expected and expected != loose  # other transactions do interrupt some bursts
    assert recorder.alerts() == expected
    recorder.assert_once()


# --- two KCL workers -----------------------------------------------------------------------------


def test_two_kcl_workers_sharing_the_state_store(messy: Simulation) -> None:
    per_shard = shard_records(messy)
    shards = sorted(per_shard)
    store, recorder, delivery, metrics = InMemoryStateStore(), Recorder(), Delivery(), InMemoryMetrics()
    workers = [fraud(recorder, store), fraud(recorder, store)]
    owned = [shards[:2], shards[2:]]
    streams = [round_robin({s: per_shard[s] for s in o}, 8) for o in owned]
    rng = random.Random(5)
    while any(streams):
        i = rng.choice([k for k, s in enumerate(streams) if s])
        deliver(workers[i], [streams[i].pop(0)], delivery=delivery, metrics=metrics)
    for worker, mine in zip(workers, owned, strict=True):  # both workers shut down
        for shard in mine:
            worker.shard_released(shard)
    assert recorder.alerts() == expected_alerts(messy)
    recorder.assert_once()
    assert metrics.total("fraud_events", outcome="too_late") == 0


# --- Lambda: one container per shard, tumbling windows --------------------------------------------


def lambda_calls(
    per_shard: dict[str, list[JournalRecord]], size: int, window_ms: int
) -> dict[str, list[tuple[list[JournalRecord], TumblingWindow | None]]]:
    """Each shard's invocations: batches within a processing window (by arrival time), the window
    given with the last one (``isFinalInvokeForWindow``)."""
    out: dict[str, list[tuple[list[JournalRecord], TumblingWindow | None]]] = {}
    for shard, records in per_shard.items():
        by_window: dict[int, list[JournalRecord]] = defaultdict(list)
        for r in records:
            arrival = int((r.user_record.parent.approximate_arrival_timestamp or 0) * 1000)  # type: ignore[union-attr]
            by_window[arrival - arrival % window_ms].append(r)
        calls: list[tuple[list[JournalRecord], TumblingWindow | None]] = []
        for start in sorted(by_window):
            chunks = [by_window[start][i : i + size] for i in range(0, len(by_window[start]), size)]
            for n, chunk in enumerate(chunks):
                window = TumblingWindow(
                    _iso(start), _iso(start + window_ms), shard, "arn:sim", {}, True, False
                )
                calls.append((chunk, window if n == len(chunks) - 1 else None))
        out[shard] = calls
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ms(text: str | None) -> int:
    assert text is not None
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_lambda_one_container_per_shard_with_tumbling_windows(messy: Simulation) -> None:
    per_shard = shard_records(messy)
    calls = lambda_calls(per_shard, 10, MINUTE)
    # the rule's precondition: every shard has a processing window closing after COMPLETED arrived
    # (Lambda has then delivered all of that shard; a shard idle before it would keep the tail)
    arrival = next(r for rs in per_shard.values() for r in rs if isinstance(r, ControlRecord)).user_record
    assert arrival is not None and arrival.parent.approximate_arrival_timestamp is not None
    completed_ms = int(arrival.parent.approximate_arrival_timestamp * 1000)
    for shard_calls in calls.values():
        last = shard_calls[-1][1]
        assert last is not None and _ms(last.end) > completed_ms
    store, recorder, delivery, metrics = InMemoryStateStore(), Recorder(), Delivery(), InMemoryMetrics()
    containers = {s: fraud(recorder, store) for s in per_shard}
    rng = random.Random(12)
    cold_starts = 0
    while any(calls.values()):
        shard = rng.choice([s for s, c in calls.items() if c])
        records, window = calls[shard].pop(0)
        h = containers[shard]
        deliver(h, [(shard, records)], delivery=delivery, metrics=metrics)
        if rng.random() < 0.1:  # the batch again, in a fresh container (a retried invocation)
            containers[shard] = h = fraud(recorder, store)
            deliver(h, [(shard, records)], delivery=Delivery(), metrics=metrics)
            cold_starts += 1
        if window is not None:
            h.window_closed(window, HandlerContext(h.name, shard, metrics=metrics))
    assert cold_starts
    assert recorder.alerts() == expected_alerts(messy)
    recorder.assert_once()
    assert metrics.total("fraud_events", outcome="too_late") == 0


def test_drain_on_completed_evaluates_at_once(messy: Simulation) -> None:
    """The opt-in: everything is evaluated when COMPLETED is read - exact here because COMPLETED
    is read after every other shard's records."""
    per_shard = shard_records(messy)
    completed = completed_shard(per_shard)
    others = sorted(s for s in per_shard if s != completed)
    recorder = Recorder()
    h = fraud(recorder, drain_on_completed="true", min_shards="4")
    deliver(h, [*round_robin({s: per_shard[s] for s in others}, 8), (completed, per_shard[completed])])
    assert recorder.alerts() == expected_alerts(messy)
    recorder.assert_once()


def test_sequences_are_decided_only_when_no_row_can_join(messy: Simulation) -> None:
    """Unit check of the decision rule on one account's history, whatever the arrival order."""
    from qldbstream_handlers.fraud import TransactionEvent, parse_sequence_rule

    rule = parse_sequence_rule("r", "sequence >= 3 within 5m where amount < 10")

    def tx(doc: str, minute: float, amount: str) -> TransactionEvent:
        a = Decimal(amount)
        return TransactionEvent("A", doc, 0, int(minute * MINUTE), a, "GBP", "x", {"amount": a})

    rows = [tx("a", 0, "1"), tx("b", 1, "50"), tx("c", 2, "2"), tx("d", 4.99, "3"), tx("e", 5, "4")]
    history = sorted(rows, key=lambda e: e.order)
    undecided = rule.scan(history, None, watermark=int(4.99 * MINUTE))
    assert undecided.matches == () and undecided.due_ms == 5 * MINUTE - 1
    decided = rule.scan(history, None, watermark=5 * MINUTE - 1)
    (match,) = decided.matches  # greedy: a, c, d (b is skipped, e is 5 minutes after a: outside)
    assert [e.document_id for e in match.evidence] == ["a", "c", "d"] and decided.cursor == history[3].order
    strict = parse_sequence_rule("r", "consecutive >= 3 within 5m where amount < 10")
    (run,) = strict.scan(history, None, watermark=10 * MINUTE).matches  # b interrupts a's run
    assert [e.document_id for e in run.evidence] == ["c", "d", "e"]
    again = rule.scan(history, decided.cursor, watermark=10 * MINUTE)
    assert again.matches == () and again.due_ms is None  # e alone cannot match


def test_the_handler_asks_the_pipeline_for_late_revisions() -> None:
    """An insert arriving after its update must still be evaluated, whatever the app's policy."""
    assert FraudHandler.late_policy == "deliver-late"
    settings = FraudHandler({}).settings
    assert not settings.drain_on_completed and settings.min_shards == 1
    assert [r.name for r in FraudHandler({}).rules] == ["velocity", "rapid_small_transactions"]
