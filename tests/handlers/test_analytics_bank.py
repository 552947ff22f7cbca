"""The analytics handler on the simulated bank, through the real pipeline: the seed's transaction
velocity must equal what the simulator's ledger says, whatever the delivery (duplicates, several
shards out of order, batch sizes, a restart mid-stream). Local sinks: memory, EMF, Parquet."""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from qldbstream_handlers.analytics import (
    TRANSACTION_VELOCITY,
    AnalyticsHandler,
    AnalyticsOptions,
    EmfSink,
    InMemoryStateStore,
    Pane,
    ParquetSink,
    Retraction,
    WindowResult,
)
from qldbstream_handlers.export.storage import LocalStorage
from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.functional.test_pipeline import FakeTime, MemoryDLQ
from tests.support.streams import batches, kinesis_records, simulation

Expected = dict[int, tuple[int, int, Decimal]]


class MemorySink:
    """Keeps the latest row per result key, like an idempotent table; counts the writes."""

    name = "memory"

    def __init__(self, fail: bool = False) -> None:
        self.rows: dict[str, WindowResult] = {}
        self.writes = 0
        self.fail = fail

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        if self.fail:
            raise ConnectionError("the sink is down")
        for pane in panes:
            for row in pane.rows:
                if row.group in pane.changed:
                    current = self.rows.get(row.key)
                    if current is None or current.revision <= row.revision:
                        self.rows[row.key] = row
                    self.writes += 1

    def close(self) -> None:
        pass

    def velocity(self) -> Expected:
        return {
            r.window_start: (
                r.values["transaction_count"],
                r.values["unique_accounts"],
                r.values["total_amount"],
            )  # type: ignore[misc]
            for r in self.rows.values()
        }


def expected_velocity(sim: Simulation) -> Expected:
    """Per 1-minute txTime window: transactions, distinct accounts, total amount - from the ledger."""
    tx_time = {(r.document_id, r.version): r.tx_time_ms for r in sim.ledger.revisions}
    windows: dict[int, list[Any]] = defaultdict(lambda: [0, set(), Decimal(0)])
    for account, transactions in sim.ledger.account_transactions.items():
        for t in transactions:
            ms = tx_time[(t.document_id, 0)]
            w = windows[ms - ms % 60_000]
            w[0] += 1
            w[1].add(account)
            w[2] += t.amount
    assert not sim.ledger.redactions  # a redacted Transactions revision would hide its amount
    return {start: (n, len(accounts), total) for start, (n, accounts, total) in windows.items()}


@pytest.fixture(scope="module")
def single() -> Simulation:
    return simulation(240, seed=11, redactions=0)


@pytest.fixture(scope="module")
def messy() -> Simulation:
    """Four shards, one journal record per Kinesis record, 20 % duplicates, reordered within 4."""
    return simulation(240, seed=11, redactions=0, shards=4, aggregate=False, duplicates=0.2, reorder=4)


def setup(handler: AnalyticsHandler, metrics: InMemoryMetrics | None = None) -> AnalyticsHandler:
    handler.setup(SetupContext({}, logging.getLogger("test"), metrics or InMemoryMetrics()))
    return handler


def pipeline(handler: AnalyticsHandler) -> Pipeline:
    t = FakeTime()
    return Pipeline(
        [handler],
        dlq=MemoryDLQ(),
        store=InMemoryDedupeStore(clock=t.clock),
        # Analytics counts every revision by event time: older versions arriving late must still come.
        settings=PipelineSettings(late_policy=LatePolicy.DELIVER_LATE),
        clock=t.clock,
        sleep=t.sleep,
    )


def round_robin(sim: Simulation, size: int) -> Iterator[tuple[str, list[KinesisRecord]]]:
    """Batches of every shard in turn, as the standalone worker polls them."""
    queues = {shard: batches(records, size) for shard, records in sorted(kinesis_records(sim).items())}
    while any(queues.values()):
        for shard, queue in queues.items():
            if queue:
                yield shard, queue.pop(0)


def run(handler: AnalyticsHandler, work: Iterator[tuple[str, list[KinesisRecord]]]) -> None:
    p = pipeline(handler)
    for shard, batch in work:
        result = p.process(shard, batch)
        assert not result.halted, result.halt_reason


def test_transaction_velocity_equals_the_ledger(single: Simulation) -> None:
    sink, metrics = MemorySink(), InMemoryMetrics()
    handler = setup(AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[sink]), metrics)
    run(handler, round_robin(single, 17))
    expected = expected_velocity(single)
    assert len(expected) >= 5
    assert sink.velocity() == expected
    # in order, no lateness: every window is written once, final (CONTROL COMPLETED ended the input)
    assert sink.writes == len(expected) and all(r.final and r.revision == 1 for r in sink.rows.values())
    assert metrics.total("analytics_events") == sum(n for n, _, _ in expected.values())
    assert metrics.total("analytics_dropped_late") == 0


@pytest.mark.parametrize("order", ["round-robin", "shard-by-shard"])
def test_duplicates_and_multi_shard_reordering_give_the_same_results(messy: Simulation, order: str) -> None:
    sink = MemorySink()
    velocity = replace(TRANSACTION_VELOCITY, allowed_lateness="2m")
    # shard by shard is the worst case: no window may close before every shard has been seen
    handler = setup(
        AnalyticsHandler(queries=[velocity], sinks=[sink], options=AnalyticsOptions(min_shards=4))
    )
    if order == "round-robin":
        run(handler, round_robin(messy, 9))
    else:
        run(
            handler,
            ((s, b) for s, records in sorted(kinesis_records(messy).items()) for b in batches(records, 9)),
        )
    assert sink.velocity() == expected_velocity(messy)  # COMPLETED on one shard ended the input
    handler.drain()  # and a drain afterwards changes nothing
    assert sink.velocity() == expected_velocity(messy)
    assert handler._engines[None]["transaction_velocity"].counters["dropped_late"] == 0


def test_redelivery_to_the_handler_itself_changes_nothing(single: Simulation) -> None:
    """Without the pipeline's de-duplication (e.g. its store forgot): every batch handed over twice."""
    sink = MemorySink()
    handler = setup(AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[sink]))
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode

    for shard, batch in round_robin(single, 25):
        records = [decode(u) for kr in batch for u in deaggregate(kr)]
        wanted = [r for r in records if handler.wants(r)]
        ctx = HandlerContext(handler.name, shard)
        for _ in range(2):
            handler.handle_batch(wanted, ctx)
            handler.flush(ctx)
    assert sink.velocity() == expected_velocity(single)
    assert handler._engines[None]["transaction_velocity"].counters["duplicates"] > 0


def test_a_restart_mid_stream_resumes_from_the_saved_state(messy: Simulation) -> None:
    """Handler-level (the pipeline's own restart behaviour is tested elsewhere): the process dies
    after a flush whose checkpoint had not moved; a new process (fresh memory, fresh
    de-duplication) gets the last batches again, then the rest."""
    from tests.handlers.messy import deliver, shard_records
    from tests.handlers.messy import round_robin as journal_round_robin

    state, sink = InMemoryStateStore(), MemorySink()
    work = journal_round_robin(shard_records(messy), 11)
    velocity = replace(TRANSACTION_VELOCITY, allowed_lateness="2m")

    def handler() -> AnalyticsHandler:
        return setup(AnalyticsHandler(queries=[velocity], sinks=[sink], state=state))

    half = len(work) // 2
    deliver(handler(), work[:half])
    assert state.saves > 0
    restarted = handler()
    deliver(restarted, work[half - 3 :])
    assert restarted._engines[None]["transaction_velocity"].counters["duplicates"] > 0
    assert sink.velocity() == expected_velocity(messy)


def test_scope_shard_keeps_windows_and_state_per_shard_and_writes_their_union(messy: Simulation) -> None:
    """For several consumers (Lambda, KCL workers): each shard's windows and state alone, each
    shard's part of a window stored, and one exact result per window - the union of the parts."""
    state, sink = InMemoryStateStore(), MemorySink()
    velocity = replace(TRANSACTION_VELOCITY, allowed_lateness="2m")
    handler = AnalyticsHandler(
        queries=[velocity], sinks=[sink], state=state, options=AnalyticsOptions(scope="shard")
    )
    run(setup(handler), round_robin(messy, 9))
    shards = sorted(kinesis_records(messy))
    for shard in shards:
        handler.shard_released(shard)  # each shard's windows are saved, then dropped from memory
    assert {f"analytics#{s}" for s in shards} <= set(state.blobs)
    assert any("#pane#" in k for k in state.blobs)
    assert handler._engines == {}
    assert all(row.shard is None for row in sink.rows.values())
    assert sink.velocity() == expected_velocity(messy)  # distinct accounts too: a union, not a sum


def test_a_failing_sink_keeps_the_checkpoint_and_the_retry_writes_the_same_results(
    single: Simulation,
) -> None:
    down, up = MemorySink(fail=True), MemorySink()
    handler = setup(AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[down]))
    p = pipeline(handler)
    (shard, records), *_ = kinesis_records(single).items()
    result = p.process(shard, records)
    assert result.halted and result.checkpoint is None and "flush of analytics failed" in result.halt_reason
    handler.sinks = [up]
    result = p.process(shard, records)  # the runtime reads the batch again from its checkpoint
    assert not result.halted and result.checkpoint is not None
    assert up.velocity() == expected_velocity(single)


# --- EMF ---------------------------------------------------------------------------------------


def check_emf(doc: dict[str, Any]) -> None:
    """The shape the CloudWatch embedded metric format specification requires."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] >= 0
    directives = aws["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for d in directives:
        assert isinstance(d["Namespace"], str) and 1 <= len(d["Namespace"]) <= 1024
        assert isinstance(d["Dimensions"], list)
        for dimension_set in d["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(name, str) and isinstance(doc[name], str)  # a dimension is a string member
        assert 1 <= len(d["Metrics"]) <= 100
        for m in d["Metrics"]:
            assert set(m) <= {"Name", "Unit", "StorageResolution"} and isinstance(m["Name"], str)
            assert m.get("Unit", "None") in {"Count", "None", "Seconds", "Bytes", "Percent"}
            value = doc[m["Name"]]  # every metric is a number member of the root
            assert isinstance(value, int | float) and not isinstance(value, bool)


def test_emf_lines_follow_the_specification_and_carry_the_result_key(single: Simulation) -> None:
    out = io.StringIO()
    grouped = replace(TRANSACTION_VELOCITY, name="by_account", group_by="accountId")
    queries = [TRANSACTION_VELOCITY, grouped]
    emf = EmfSink({q.name: q.aggregates for q in queries}, {q.name: q.group_by for q in queries}, out=out)
    memory = MemorySink()
    run(setup(AnalyticsHandler(queries=queries, sinks=[emf, memory])), round_robin(single, 40))
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    for doc in docs:
        check_emf(doc)
    velocity = [d for d in docs if d["Query"] == "transaction_velocity"]
    expected = expected_velocity(single)
    assert {d["_aws"]["Timestamp"]: d["transaction_count"] for d in velocity} == {
        k: v[0] for k, v in expected.items()
    }
    assert {d["ResultKey"] for d in docs} == set(memory.rows)
    by_account = [d for d in docs if d["Query"] == "by_account"]
    assert by_account and all(
        d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Query", "accountId"]] for d in by_account
    )
    assert sum(d["transaction_count"] for d in by_account) == sum(v[0] for v in expected.values())


# --- Parquet (local directory) ----------------------------------------------------------------


def test_parquet_files_one_per_window_rewritten_in_place(messy: Simulation, tmp_path: Path) -> None:
    velocity = replace(TRANSACTION_VELOCITY, allowed_lateness="2m")
    sink = ParquetSink(LocalStorage(tmp_path), {velocity.name: velocity.aggregates}, compression="zstd")
    handler = setup(
        AnalyticsHandler(queries=[velocity], sinks=[sink], options=AnalyticsOptions(min_shards=4))
    )
    work = list(round_robin(messy, 9))
    run(handler, iter(work))
    run(handler, iter(work[-5:]))  # a redelivery of the last batches (the pipeline is new: no marks)
    handler.drain()
    files = sorted(tmp_path.rglob("*.parquet"))
    expected = expected_velocity(messy)
    assert len(files) == len(expected)
    assert all(f.parent.name.startswith("date=2024-03-01") for f in files)
    got: Expected = {}
    for f in files:
        table = pq.read_table(f)
        assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
        assert str(table.schema.field("total_amount").type) == "decimal128(38, 6)"
        assert str(table.schema.field("window_start").type) == "timestamp[ms, tz=UTC]"
        (row,) = table.to_pylist()
        assert row["final"] is True
        start = int(row["window_start"].timestamp() * 1000)
        got[start] = (row["transaction_count"], row["unique_accounts"], row["total_amount"])
    assert got == expected
