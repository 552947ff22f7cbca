"""The standalone worker against kinesis-local (Kinesis: shard end, ChildShards, resharding) and moto
server (DynamoDB: checkpoints and de-duplication marks), with a simulated QLDB ledger in each stream.

"Exactly once" is judged by an idempotent sink keyed by (documentId, version) that counts its calls:
every revision must reach it, and none twice unless a process was killed mid-batch. One short-lived
stream and table per test (kinesis-local slows down as shards fill up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from qldbstream_tools.simulate import DeliveryOptions, Simulation, SimulationConfig, Workload, simulate

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import JournalRecord, RevisionDetails
from qldbstream.core.dedupe import LatePolicy
from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.kinesis_reader import read_stream
from qldbstream.io.kinesis_writer import PutEntry, put_records
from qldbstream.pipeline.checkpoint import Checkpoint
from qldbstream.runtimes.worker import ShardStatus, Worker, WorkerOptions
from tests.support.aws import REGION, client, kinesis_stream, wait_until_active
from tests.support.fakes import MemoryDLQ
from tests.support.servers import REPO_ROOT, LocalServer, MotoServer

pytestmark = pytest.mark.integration


# -- the sinks --------------------------------------------------------------------------------------


class Sink(Handler):
    """In-process idempotent sink: counts (documentId, version), remembers shard order, can be down."""

    name = "sink"

    def __init__(self, down: Callable[[], bool] = lambda: False) -> None:
        self.effects: Counter[tuple[str, int]] = Counter()
        self.order: list[str] = []
        self.released: list[str] = []
        self.down = down
        self.lock = threading.Lock()

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        if self.down():
            raise ConnectionError("the sink is down")
        for r in records:
            assert isinstance(r, RevisionDetails)
            self.effects[(r.document_id, r.version)] += 1
            self.order.append(ctx.shard_id or "")

    def shard_released(self, shard_id: str) -> None:
        self.released.append(shard_id)


class FileSink(Handler):
    """For ``qldbstream run`` subprocesses: appends ``documentId version`` lines; ``flush_delay`` slows it."""

    name = "file_sink"

    def __init__(self, settings: dict[str, str]) -> None:
        self.path = Path(settings["path"])
        self.flush_delay = float(settings.get("flush_delay", "0"))

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        with self.path.open("a") as out:
            out.writelines(
                f"{r.document_id} {r.version}\n" for r in records if isinstance(r, RevisionDetails)
            )

    def flush(self, ctx: HandlerContext) -> None:
        time.sleep(self.flush_delay)


def file_sink(settings: dict[str, str]) -> Handler:
    return FileSink(settings)


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture
def kinesis(kinesis_local: LocalServer) -> Any:
    return client("kinesis", kinesis_local.endpoint)


@pytest.fixture
def dynamodb(moto_server: MotoServer) -> Any:
    return client("dynamodb", moto_server.endpoint)


@pytest.fixture
def store(dynamodb: Any) -> DynamoDBCheckpointStore:
    table = f"checkpoints-{uuid.uuid4().hex[:8]}"
    DynamoDBCheckpointStore.create_table(dynamodb, table)
    return DynamoDBCheckpointStore(dynamodb, table)


def ledger(transactions: int, shards: int, *, seed: int = 3, completed: bool = True) -> Simulation:
    return simulate(
        SimulationConfig(
            seed=seed,
            workload=Workload(transactions=transactions),
            delivery=DeliveryOptions(aggregate=True, shards=shards, completed=completed),
        )
    )


def put(kinesis: Any, stream: str, sim: Simulation, partition_key: str | None = None) -> None:
    entries = [PutEntry(d.data, partition_key or d.partition_key) for d in sim.deliveries]
    put_records(kinesis, stream, entries)


def revisions(sim: Simulation) -> set[tuple[str, int]]:
    return {(r.document_id, r.version) for r in sim.ledger.revisions}


def make_worker(
    kinesis: Any,
    stream: str,
    sink: Handler,
    store: DynamoDBCheckpointStore,
    *,
    settings: Settings | None = None,
    metrics: InMemoryMetrics | None = None,
    **options: Any,
) -> Worker:
    settings = settings or Settings(late_policy=LatePolicy.DELIVER_LATE)
    app = App(settings, handlers=[sink], dlq=MemoryDLQ(), metrics=metrics)
    defaults: dict[str, Any] = {"poll_interval": 0.05, "batch_min": 5, "batch_max": 20, "halt_backoff": 0.1}
    return Worker(
        kinesis, stream, app.pipeline(), store, [sink], WorkerOptions(**{**defaults, **options}), app.metrics
    )


def last_user_records(kinesis: Any, stream: str) -> dict[str, tuple[str, int]]:
    """Each shard's last (sequence number, sub-sequence number), read back independently."""
    last = {r.shard_id: r for r in read_stream(kinesis, stream, poll_interval=0.02)}
    return {shard: (r.sequence_number, len(deaggregate(r)) - 1) for shard, r in last.items() if shard}


# -- every record once, checkpoints in DynamoDB --------------------------------------------------------


def test_every_revision_once_and_checkpoints_at_each_shards_last_user_record(
    kinesis: Any, store: DynamoDBCheckpointStore
) -> None:
    sim, sink, metrics = ledger(60, 3), Sink(), InMemoryMetrics()
    with kinesis_stream(kinesis, 3, prefix="worker") as stream:
        put(kinesis, stream, sim)
        report = make_worker(kinesis, stream, sink, store, metrics=metrics).run(until_caught_up=True)
        ends = last_user_records(kinesis, stream)

    assert report.reason == "caught-up"
    assert set(sink.effects) == revisions(sim) and set(sink.effects.values()) == {1}
    saved = store.all(stream)
    assert {s: (cp.sequence_number, cp.sub_sequence_number) for s, cp in saved.items()} == ends
    assert all(
        report.shards[s].checkpoint == ends[s] and report.shards[s].millis_behind_latest == 0 for s in ends
    )
    assert {dims[0][1] for name, dims in metrics.gauges if name == "stream_lag_ms"} == set(ends)
    assert sorted(sink.released) == sorted(ends)


# -- resharding while the worker runs ---------------------------------------------------------------------


def test_update_shard_count_while_running_parents_before_children_nothing_lost_or_repeated(
    kinesis: Any, store: DynamoDBCheckpointStore
) -> None:
    sim, sink = ledger(80, 2), Sink()
    half = len(sim.deliveries) // 2
    with kinesis_stream(kinesis, 2, prefix="worker-reshard") as stream:
        put_records(kinesis, stream, [PutEntry(d.data, d.partition_key) for d in sim.deliveries[:half]])
        worker = make_worker(kinesis, stream, sink, store, batch_min=3, batch_max=5)
        resharded: list[bool] = []

        def reshard_midway(status: ShardStatus) -> None:
            if not resharded and status.records_read >= 5:
                resharded.append(True)
                kinesis.update_shard_count(
                    StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
                )
                wait_until_active(kinesis, stream)
                put_records(
                    kinesis, stream, [PutEntry(d.data, d.partition_key) for d in sim.deliveries[half:]]
                )

        worker.on_progress = reshard_midway
        report = worker.run(until_caught_up=True)
        shards = kinesis.list_shards(StreamName=stream)["Shards"]

    assert resharded and report.reason == "caught-up"
    assert set(sink.effects) == revisions(sim) and set(sink.effects.values()) == {1}
    saved = store.all(stream)
    parents = {s["ShardId"] for s in shards if "EndingSequenceNumber" in s["SequenceNumberRange"]}
    assert len(parents) == 2 and all(saved[p].shard_ended for p in parents)
    pairs = 0
    for shard in shards:
        parent = shard.get("ParentShardId")
        if parent and shard["ShardId"] in sink.order:
            assert max(i for i, s in enumerate(sink.order) if s == parent) < sink.order.index(
                shard["ShardId"]
            )
            assert sink.released.index(parent) < sink.released.index(shard["ShardId"])
            pairs += 1
    assert pairs >= 2


# -- restarts -------------------------------------------------------------------------------------------


def test_programmatic_stop_then_restart_processes_the_rest_exactly_once(
    kinesis: Any, store: DynamoDBCheckpointStore
) -> None:
    sim, first, second = ledger(60, 2), Sink(), Sink()
    with kinesis_stream(kinesis, 2, prefix="worker-restart") as stream:
        put(kinesis, stream, sim)
        worker = make_worker(kinesis, stream, first, store, batch_max=5)
        worker.on_progress = lambda _: worker.stop() if sum(first.effects.values()) >= 25 else None
        assert worker.run().reason == "stopped"
        saved = store.all(stream)
        # a new worker with a new pipeline: its in-memory de-duplication store is empty
        assert make_worker(kinesis, stream, second, store).run(until_caught_up=True).reason == "caught-up"

    assert saved and all(cp.sequence_number for cp in saved.values())
    assert 25 <= sum(first.effects.values()) < len(revisions(sim))
    total = first.effects + second.effects
    assert set(total) == revisions(sim) and set(total.values()) == {1}


def write_config(path: Path, effects: Path, flush_delay: float = 0.0, **values: Any) -> Path:
    """A TOML settings file for ``qldbstream run`` with the file sink writing to ``effects``."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["[handlers]", 'active = ["tests.integration.test_worker:file_sink"]', "[handlers.file_sink]"]
    lines += [f"path = {json.dumps(str(effects))}", f'flush_delay = "{flush_delay}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def start_run(config: Path, env: dict[str, str], *flags: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "qldbstream",
        "run",
        "--config",
        str(config),
        "--poll-interval",
        "0.05",
        *flags,
    ]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()[0].decode()
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} effects after {timeout} s")


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment of a ``qldbstream run`` subprocess: dummy credentials, no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLDBSTREAM_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION)
    return env


def test_sigterm_to_qldbstream_run_checkpoints_and_exits_0_then_a_restart_finishes(
    kinesis: Any,
    dynamodb: Any,
    kinesis_local: LocalServer,
    moto_server: MotoServer,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    sim = ledger(60, 2)
    table, dedupe = f"run-checkpoints-{uuid.uuid4().hex[:8]}", f"run-dedupe-{uuid.uuid4().hex[:8]}"
    DynamoDBDedupeStore.create_table(dynamodb, dedupe)
    effects = tmp_path / "effects.txt"
    with kinesis_stream(kinesis, 2, prefix="worker-cli") as stream:
        put(kinesis, stream, sim)
        common = {
            "stream_name": stream,
            "kinesis_endpoint_url": kinesis_local.endpoint,
            "dynamodb_endpoint_url": moto_server.endpoint,
            "checkpoint_table": table,
            "dedupe_store": f"dynamodb:{dedupe}",
            "late_policy": "deliver-late",
            "batch_min": 2,
            "batch_max": 4,
            # shard order: under journal order a block summary arriving late releases every block
            # waiting for it in one batch, so the whole small stream could finish before the signal
            "order": "shard",
            "log_format": "text",
            "log_level": "WARNING",
        }
        # 1. one SIGTERM: the batch in progress finishes, its checkpoint is saved, exit 0
        process = start_run(
            write_config(tmp_path / "a.toml", effects, 0.05, **common), cli_env, "--create-table"
        )
        wait_for_lines(effects, 10, process)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        assert "qldbstream run: stopped" in output
        saved = DynamoDBCheckpointStore(dynamodb, table).all(f"qldbstream/{stream}")
        assert saved and any(cp.sequence_number for cp in saved.values())
        after_first = Counter(effects.read_text().splitlines())
        assert set(after_first.values()) == {1} and len(after_first) < len(revisions(sim))
        # 2. two signals: the second one exits at once (143), mid-batch, without a checkpoint
        process = start_run(write_config(tmp_path / "b.toml", effects, 3.0, **common), cli_env)
        wait_for_lines(effects, len(after_first) + 1, process)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode()
        assert process.returncode == 143, output
        killed_batch = set(effects.read_text().splitlines()[sum(after_first.values()) :])
        # 3. a restart resumes at the checkpoints and finishes everything
        process = start_run(
            write_config(tmp_path / "c.toml", effects, **common), cli_env, "--until-caught-up"
        )
        output = process.communicate(timeout=60)[0].decode()
        assert process.returncode == 0, output
        assert "caught-up" in output

    seen = Counter(effects.read_text().splitlines())
    assert set(seen) == {f"{d} {v}" for d, v in revisions(sim)}  # nothing skipped
    repeated = {line for line, n in seen.items() if n > 1}
    assert killed_batch and repeated <= killed_batch  # only the batch killed mid-flush may come twice
    assert set(seen.values()) <= {1, 2}


# -- bounded export ---------------------------------------------------------------------------------------


def test_bounded_export_stops_each_shard_at_end_time(kinesis: Any, store: DynamoDBCheckpointStore) -> None:
    before, after, sink = ledger(30, 2, seed=1, completed=False), ledger(30, 2, seed=2), Sink()
    with kinesis_stream(kinesis, 2, prefix="worker-bounded") as stream:
        put(kinesis, stream, before)
        time.sleep(0.05)
        end = datetime.now(UTC)
        time.sleep(0.05)
        put(kinesis, stream, after)
        report = make_worker(kinesis, stream, sink, store, end_time=end).run()

    assert report.reason == "finished"
    assert set(sink.effects) == revisions(before) and set(sink.effects.values()) == {1}
    assert {s.end_reason for s in report.shards.values()} == {"end-time"}
    assert not any(cp.shard_ended for cp in store.all(stream).values())


def test_bounded_export_stops_at_control_completed(kinesis: Any, store: DynamoDBCheckpointStore) -> None:
    sim, later, sink = ledger(30, 2, seed=4), ledger(10, 1, seed=9), Sink()
    (completed,) = [d for d in sim.deliveries if not d.aggregated and b"COMPLETED" in d.data]
    with kinesis_stream(kinesis, 2, prefix="worker-completed") as stream:
        put(kinesis, stream, sim)
        put(kinesis, stream, later, partition_key=completed.partition_key)  # after COMPLETED, same shard
        end = datetime.now(UTC) + timedelta(hours=1)
        report = make_worker(kinesis, stream, sink, store, end_time=end).run()

    assert report.reason == "finished"
    assert set(sink.effects) == revisions(sim)
    assert sorted(s.end_reason or "" for s in report.shards.values()) == ["at-tip", "completed"]


# -- a sink outage ------------------------------------------------------------------------------------------


def test_sink_outage_halts_the_shards_without_moving_their_checkpoints_then_recovers(
    kinesis: Any, store: DynamoDBCheckpointStore
) -> None:
    sim = ledger(40, 2)
    outage = {"from": float("inf"), "until": float("inf")}
    sink = Sink(down=lambda: outage["from"] <= time.monotonic() < outage["until"])
    settings = Settings(
        late_policy=LatePolicy.DELIVER_LATE,
        retry_max_attempts=2,
        retry_base_delay_ms=10,
        breaker_failures=3,
        breaker_recovery_seconds=1.0,
    )
    halted: list[tuple[str, Checkpoint | None, str]] = []
    metrics = InMemoryMetrics()
    with kinesis_stream(kinesis, 2, prefix="worker-outage") as stream:
        put(kinesis, stream, sim)
        worker = make_worker(
            kinesis, stream, sink, store, settings=settings, metrics=metrics, halt_backoff_cap=0.3
        )

        def watch(status: ShardStatus) -> None:
            if outage["from"] == float("inf") and sum(sink.effects.values()) >= 10:
                outage["from"] = time.monotonic()  # the sink goes down after the first records
            if status.halt_reason:
                halted.append((status.shard_id, store.get(stream, status.shard_id), status.halt_reason))
                if len(halted) == 6:
                    outage["until"] = time.monotonic() + 0.5  # and comes back soon after

        worker.on_progress = watch
        report = worker.run(until_caught_up=True)

    assert report.reason == "caught-up"
    assert len(halted) >= 6
    # each halt is the outage: the sink's own error, or its circuit breaker refusing the batch
    assert all("the sink is down" in r or "circuit breaker for sink is open" in r for _, _, r in halted)
    assert any(cp is not None for _, cp, _ in halted)  # the outage began after the first checkpoints
    for shard in {s for s, _, _ in halted}:
        assert len({cp for s, cp, _ in halted if s == shard}) == 1  # the checkpoint never moved while down
    assert set(sink.effects) == revisions(sim) and set(sink.effects.values()) == {1}
    assert metrics.total("shard_halts") >= 6
