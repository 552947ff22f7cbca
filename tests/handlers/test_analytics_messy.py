"""The analytics handler with default settings on a messy four-shard stream, in the three runtimes'
shapes: one consumer reading every shard (the worker), two consumers splitting the shards (KCL
workers), one consumer per shard with Lambda's tumbling-window final invocations or without them.

The stream has duplicates, reordering, older versions after newer ones (flagged late), and CONTROL
``COMPLETED`` on one shard only. The expected windows - transactions, distinct accounts and the
exact decimal total per minute of ``txTime`` - are computed here from the simulator's ledger in
plain Python, and every window must be written with exactly those values, without ``drain``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from qldbstream_handlers.analytics import (
    TRANSACTION_VELOCITY,
    AnalyticsHandler,
    AnalyticsOptions,
    InMemoryStateStore,
    Pane,
    Retraction,
    WindowResult,
)
from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.decode import JournalRecord
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
from tests.support.streams import simulation

Velocity = dict[int, tuple[int, int, Decimal]]
MINUTE = 60_000


def ledger_velocity(sim: Simulation) -> Velocity:
    """Per minute of txTime: Transactions inserts, distinct accounts, total amount - from the ledger."""
    windows: dict[int, list[Any]] = defaultdict(lambda: [0, set(), Decimal(0)])
    for rev in sim.ledger.revisions:
        if rev.table != "Transactions" or rev.op != "insert" or rev.version != 0:
            continue
        assert not rev.redacted and rev.data is not None
        data: Any = rev.data
        w = windows[rev.tx_time_ms - rev.tx_time_ms % MINUTE]
        w[0] += 1
        w[1].add(str(data["accountId"]))
        w[2] += Decimal(data["amount"])
    return {start: (n, len(accounts), total) for start, (n, accounts, total) in windows.items()}


class Table:
    """A results table as DynamoDB keeps it: the newest revision per result key (shared by consumers)."""

    name = "table"

    def __init__(self) -> None:
        self.rows: dict[str, WindowResult] = {}

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        for pane in panes:
            for row in pane.rows:
                current = self.rows.get(row.key)
                if row.group in pane.changed and (current is None or current.revision <= row.revision):
                    self.rows[row.key] = row

    def close(self) -> None:
        pass

    def velocity(self) -> Velocity:
        out: Velocity = {}
        for r in self.rows.values():
            assert r.shard is None, "one result per window, not per shard"
            values: Any = r.values
            out[r.window_start] = (
                values["transaction_count"],
                values["unique_accounts"],
                values["total_amount"],
            )
        return out


def handler(table: Table, state: InMemoryStateStore | None = None, **options: Any) -> AnalyticsHandler:
    h = AnalyticsHandler(
        queries=[TRANSACTION_VELOCITY],  # the preset as shipped: no lateness, no min_shards
        sinks=[table],
        state=state if state is not None else InMemoryStateStore(),
        options=AnalyticsOptions(**options),
    )
    h.setup(SetupContext({}, __import__("logging").getLogger("test"), InMemoryMetrics()))
    return h


@pytest.fixture(scope="module")
def messy() -> Simulation:
    """Four shards, one record per Kinesis record, 30 % duplicates, reordering within 6."""
    return simulation(300, seed=23, redactions=0, shards=4, aggregate=False, duplicates=0.3, reorder=6)


def orders(per_shard: dict[str, list[JournalRecord]]) -> dict[str, list[Batch]]:
    completed = completed_shard(per_shard)
    others = sorted(s for s in per_shard if s != completed)
    return {
        "round-robin": round_robin(per_shard, 9),
        "shard-by-shard": shard_by_shard(per_shard, 9, reverse=True),
        "completed-shard-first": shard_by_shard(per_shard, 9, order=[completed, *others]),
        "completed-shard-last": shard_by_shard(per_shard, 9, order=[*others, completed]),
    }


@pytest.mark.parametrize(
    "order", ["round-robin", "shard-by-shard", "completed-shard-first", "completed-shard-last"]
)
def test_one_consumer_reading_every_shard(messy: Simulation, order: str) -> None:
    """The worker: one handler, scope = stream, default settings, any shard interleaving."""
    per_shard = shard_records(messy)
    table = Table()
    h = handler(table)
    assert h.scope == "stream"
    deliver(h, orders(per_shard)[order])
    expected = ledger_velocity(messy)
    assert len(expected) >= 8
    assert table.velocity() == expected  # every window written, without drain
    counters = h._engines[None]["transaction_velocity"].counters
    assert counters["dropped_late"] == 0
    if order in ("shard-by-shard", "completed-shard-first"):
        assert counters["reopened"] > 0  # windows written, then corrected by a shard read later
    assert all(r.final for r in table.rows.values())


def test_a_worker_release_at_the_end_changes_nothing(messy: Simulation) -> None:
    per_shard = shard_records(messy)
    table = Table()
    h = handler(table)
    deliver(h, round_robin(per_shard, 9))
    before = dict(table.rows)
    for shard in per_shard:
        h.shard_released(shard)
    assert table.rows == before


def test_stored_windows_stay_bounded_by_keep_closed(messy: Simulation) -> None:
    """Purged windows are kept for late events, but only ``keep_closed`` behind the newest event:
    a long-running worker with the in-memory store does not grow without bound."""
    per_shard = shard_records(messy)
    table, state = Table(), InMemoryStateStore()
    h = handler(table, state, keep_closed="3m")
    deliver(h, round_robin(per_shard, 9))
    expected = ledger_velocity(messy)
    assert table.velocity() == expected
    newest = max(expected) + MINUTE
    kept = [int(k.rsplit("#", 1)[1]) for k in state.blobs if "#pane#" in k]
    assert kept and all(end > newest - 4 * MINUTE for end in kept)
    assert len(kept) < len(expected)


def test_two_kcl_workers_splitting_the_shards(messy: Simulation) -> None:
    """scope = shard: each worker's shards keep their own windows; the union is written."""
    per_shard = shard_records(messy)
    shards = sorted(per_shard)
    table, state, delivery = Table(), InMemoryStateStore(), Delivery()
    workers = [handler(table, state, scope="shard"), handler(table, state, scope="shard")]
    mine = [{s: per_shard[s] for s in shards[:2]}, {s: per_shard[s] for s in shards[2:]}]
    streams = [round_robin(mine[0], 7), round_robin(mine[1], 5)]
    rng = random.Random(4)
    while any(streams):
        i = rng.choice([k for k, s in enumerate(streams) if s])
        deliver(workers[i], [streams[i].pop(0)], delivery=delivery)
    assert table.velocity() == ledger_velocity(messy)
    # every shard's part of every window is in the store, under the window's members
    members = [m for g, m in state.groups.items() if g.startswith("analytics#transaction_velocity#")]
    assert members and {s for m in members for s in m} == set(shards)


def lambda_invocations(
    per_shard: dict[str, list[JournalRecord]], size: int, window_ms: int
) -> dict[str, list[tuple[list[JournalRecord], TumblingWindow | None]]]:
    """Each shard's invocations as an event source mapping with ``TumblingWindowInSeconds`` makes
    them: batches within a processing window (by arrival time); the last invocation of a window is
    the final one (``window`` given), also for the shard's last window."""
    out: dict[str, list[tuple[list[JournalRecord], TumblingWindow | None]]] = {}
    for shard, records in per_shard.items():
        by_window: dict[int, list[JournalRecord]] = defaultdict(list)
        for r in records:
            assert r.user_record is not None and r.user_record.parent.approximate_arrival_timestamp
            arrival = int(r.user_record.parent.approximate_arrival_timestamp * 1000)
            by_window[arrival - arrival % window_ms].append(r)
        calls: list[tuple[list[JournalRecord], TumblingWindow | None]] = []
        for start in sorted(by_window):
            chunks = [by_window[start][i : i + size] for i in range(0, len(by_window[start]), size)]
            for n, chunk in enumerate(chunks):
                final = n == len(chunks) - 1
                window = TumblingWindow(
                    _iso(start), _iso(start + window_ms), shard, "arn:sim", {}, final, False
                )
                calls.append((chunk, window if final else None))
        out[shard] = calls
    return out


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.mark.parametrize("tumbling", [True, False], ids=["tumbling-windows", "no-tumbling-windows"])
def test_lambda_one_container_per_shard_completed_on_one_shard(
    messy: Simulation, tumbling: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lambda: every shard in its own container (its own handler instance), invoked interleaved;
    the state store and the results table are shared (DynamoDB); COMPLETED reaches one shard."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "qldbstream")
    per_shard = shard_records(messy)
    table, state, delivery, metrics = Table(), InMemoryStateStore(), Delivery(), InMemoryMetrics()
    containers = {shard: handler(table, state) for shard in per_shard}
    assert all(h.scope == "shard" for h in containers.values())
    calls = lambda_invocations(per_shard, 10, MINUTE)
    rng = random.Random(9)
    retried = 0
    while any(calls.values()):
        shard = rng.choice([s for s, c in calls.items() if c])
        records, window = calls[shard].pop(0)
        h = containers[shard]
        deliver(h, [(shard, records)], delivery=delivery, metrics=metrics)
        if rng.random() < 0.1:  # Lambda retries the batch in a fresh container (cold start)
            containers[shard] = h = handler(table, state)
            deliver(h, [(shard, records)], delivery=Delivery(), metrics=metrics)
            retried += 1
        if tumbling and window is not None:
            h.window_closed(window, HandlerContext(h.name, shard, metrics=metrics))
    assert retried
    assert table.velocity() == ledger_velocity(messy)
    if tumbling:  # every shard's processing window closed after its last records: all final
        assert all(r.final for r in table.rows.values())


def test_lambda_retry_after_a_crash_between_part_and_state_changes_nothing(messy: Simulation) -> None:
    """A container writes its parts, then dies before saving its window state: the batch comes
    again to a fresh container, which counts the same events into the same part revisions."""
    per_shard = shard_records(messy)
    table, state = Table(), InMemoryStateStore()
    batches = round_robin(per_shard, 11)
    first = handler(table, state, scope="shard")
    half = len(batches) // 2
    deliver(first, batches[:half])
    shard, records = batches[half]
    first.handle_batch(records, HandlerContext(first.name, shard))
    original = state.save

    def die_on_state(key: str, blob: bytes) -> None:
        if "#pane#" not in key:
            raise ConnectionError("container killed")
        original(key, blob)

    state.save = die_on_state  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        first.flush(HandlerContext(first.name, shard))
    state.save = original  # type: ignore[method-assign]
    second = {s: handler(table, state, scope="shard") for s in per_shard}
    for s, b in batches[half:]:
        deliver(second[s], [(s, b)])
    assert table.velocity() == ledger_velocity(messy)
