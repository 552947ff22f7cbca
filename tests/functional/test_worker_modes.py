"""The standalone worker's loop against an in-memory Kinesis: modes, checkpoints, halts, resharding,
restarts, throttling. Time is fake (the injected ``sleep`` advances the injected clock); nothing here
really sleeps or talks to a server. The same behaviour against kinesis-local and DynamoDB on moto is
in ``tests/integration/test_worker.py``."""

from __future__ import annotations

import argparse
import itertools
import random
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.cli import run as run_command
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError, InputError, RetryableError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import LATEST, StartPosition
from qldbstream.io.shards import covered
from qldbstream.pipeline.checkpoint import Checkpoint, InMemoryCheckpointStore
from qldbstream.pipeline.settings import VerificationAction
from qldbstream.runtimes.worker import Worker, WorkerOptions
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import simulation

#: the fake clock's start (epoch seconds)
T0 = 1_800_000_000.0
STREAM = "fake-stream"
BASE_SEQ = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000


class FakeKinesis:
    """Kinesis in a dictionary: shards with parents, closing with ChildShards, the five iterator types,
    MillisBehindLatest from arrival times, and scripted ClientError faults."""

    def __init__(self, t: FakeTime, shards: int) -> None:
        self.t = t
        self.meta = SimpleNamespace(endpoint_url="memory://kinesis")
        self.shards: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        self.faults: dict[str, dict[int, str]] = {}
        self.seq = BASE_SEQ
        for i in range(shards):
            self._add(f"shardId-{i:012d}", ())

    def _add(self, shard_id: str, parents: tuple[str, ...]) -> None:
        self.shards[shard_id] = {"parents": parents, "records": [], "closed": False, "children": []}

    def put(self, shard_id: str, data: bytes, key: str = "pk") -> str:
        shard = self.shards[shard_id]
        assert not shard["closed"], f"{shard_id} is closed"
        self.seq += 7
        self.t.now += 0.001
        shard["records"].append((str(self.seq), data, key, self.t.now))
        return str(self.seq)

    def split_all(self) -> dict[str, list[str]]:
        """UpdateShardCount doubling: every open shard closes and gets two children."""
        out: dict[str, list[str]] = {}
        for shard_id in [s for s, v in self.shards.items() if not v["closed"]]:
            children = [f"shardId-{len(self.shards) + i:012d}" for i in range(2)]
            for child in children:
                self._add(child, (shard_id,))
            self.shards[shard_id]["closed"] = True
            self.shards[shard_id]["children"] = children
            out[shard_id] = children
        return out

    def fail(self, operation: str, code: str, times: int = 1, *, after: int = 0) -> None:
        """Raise ``code`` on ``times`` calls of ``operation``, ``after`` calls after the last planned one."""
        seen = sum(op == operation for _, op, _ in self.calls)
        planned = self.faults.setdefault(operation, {})
        first = max([seen, *[n + 1 for n in planned]]) + after
        planned.update(dict.fromkeys(range(first, first + times), code))

    def _call(self, operation: str, params: dict[str, Any]) -> None:
        number = sum(op == operation for _, op, _ in self.calls)
        self.calls.append((self.t.now, operation, params))
        code = self.faults.get(operation, {}).pop(number, None)
        if code is not None:
            raise ClientError({"Error": {"Code": code, "Message": "scripted"}}, operation)

    def describe_stream_summary(self, **p: Any) -> Any:
        self._call("describe_stream_summary", p)
        if p["StreamName"] != STREAM:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no"}}, "Describe")
        return {"StreamDescriptionSummary": {"StreamARN": f"arn:aws:kinesis:us-east-1:1:stream/{STREAM}"}}

    def list_shards(self, **p: Any) -> Any:
        self._call("list_shards", p)
        shards = []
        for shard_id, s in self.shards.items():
            info: dict[str, Any] = {
                "ShardId": shard_id,
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            }
            for key, parent in zip(("ParentShardId", "AdjacentParentShardId"), s["parents"], strict=False):
                info[key] = parent
            if s["closed"]:
                info["SequenceNumberRange"]["EndingSequenceNumber"] = (
                    s["records"][-1][0] if s["records"] else "1"
                )
            shards.append(info)
        return {"Shards": shards}

    def get_shard_iterator(self, **p: Any) -> Any:
        self._call("get_shard_iterator", p)
        records = self.shards[p["ShardId"]]["records"]
        kind = p["ShardIteratorType"]
        seqs = [int(r[0]) for r in records]
        if kind == "TRIM_HORIZON":
            index = 0
        elif kind == "LATEST":
            index = len(records)
        elif kind == "AT_TIMESTAMP":
            index = next(
                (i for i, r in enumerate(records) if r[3] >= p["Timestamp"].timestamp()), len(records)
            )
        else:
            at = int(p["StartingSequenceNumber"])
            after = kind == "AFTER_SEQUENCE_NUMBER"
            index = next((i for i, s in enumerate(seqs) if s > at or (s == at and not after)), len(records))
        return {"ShardIterator": f"{p['ShardId']}|{index}"}

    def get_records(self, **p: Any) -> Any:
        self._call("get_records", p)
        shard_id, index = p["ShardIterator"].split("|")
        shard = self.shards[shard_id]
        records = shard["records"]
        batch = records[int(index) : int(index) + p["Limit"]]
        end = int(index) + len(batch)
        behind = 0 if end >= len(records) else int((records[-1][3] - batch[-1][3]) * 1000) + 1
        out: dict[str, Any] = {
            "Records": [
                {
                    "SequenceNumber": s,
                    "Data": d,
                    "PartitionKey": k,
                    "ApproximateArrivalTimestamp": datetime.fromtimestamp(a, UTC),
                }
                for s, d, k, a in batch
            ],
            "MillisBehindLatest": behind,
            "NextShardIterator": f"{shard_id}|{end}",
        }
        if shard["closed"] and end >= len(records):
            del out["NextShardIterator"]
            out["ChildShards"] = [
                {"ShardId": c, "ParentShards": [shard_id], "HashKeyRange": {}} for c in shard["children"]
            ]
        return out

    def requests(self, operation: str) -> list[dict[str, Any]]:
        return [p for _, op, p in self.calls if op == operation]


class Sink(Router):
    """An idempotent sink keyed by (documentId, version) that counts calls, remembers the order of
    the shards it saw, and can fail on chosen revisions (ConnectionError: transient, halts the shard)."""

    def __init__(self) -> None:
        super().__init__("sink")
        self.effects: Counter[tuple[str, int]] = Counter()
        self.order: list[str] = []
        self.released: list[str] = []
        self.fail_on: dict[tuple[str, int], int] = {}
        self.add_revision_handler(self.on_revision)

    def on_revision(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        key = (revision.document_id, revision.version)
        if self.fail_on.get(key, 0) > 0:
            self.fail_on[key] -= 1
            raise ConnectionError(f"sink down for {key}")
        self.effects[key] += 1
        self.order.append(ctx.shard_id or "")

    def shard_released(self, shard_id: str) -> None:
        self.released.append(shard_id)


def put_simulation(
    kinesis: FakeKinesis, sim: Simulation, shard_of: Callable[[str], str] | None = None
) -> None:
    for d in sim.deliveries:
        kinesis.put(shard_of(d.shard_id) if shard_of else d.shard_id, d.data, d.partition_key)


def expected(sim: Simulation) -> set[tuple[str, int]]:
    return {(r.document_id, r.version) for r in sim.ledger.revisions}


def make_worker(
    kinesis: FakeKinesis,
    t: FakeTime,
    sink: Sink,
    store: InMemoryCheckpointStore | None = None,
    metrics: InMemoryMetrics | None = None,
    late_policy: LatePolicy = LatePolicy.DELIVER_LATE,
    verification_action: VerificationAction = VerificationAction.DEAD_LETTER,
    **options: Any,
) -> Worker:
    # several shards: a document's older revision can come after a newer one - deliver it anyway
    settings = Settings(
        retry_max_attempts=2,
        retry_base_delay_ms=10,
        breaker_failures=50,
        late_policy=late_policy,
        verification_action=verification_action,
    )
    app = App(settings, handlers=[sink], dlq=MemoryDLQ(), metrics=metrics)
    defaults: dict[str, Any] = {"batch_min": 2, "batch_max": 6, "poll_interval": 0.5, "halt_backoff": 0.5}
    return Worker(
        kinesis,  # type: ignore[arg-type]
        STREAM,
        app.pipeline(clock=t.clock, sleep=t.sleep),
        store if store is not None else InMemoryCheckpointStore(),
        [sink],
        WorkerOptions(**{**defaults, **options}),
        metrics or InMemoryMetrics(),
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(5),
    )


def revisions_in(seq: str, data: bytes, key: str) -> set[tuple[str, int]]:
    """The (document id, version) of the revisions one Kinesis record holds."""
    decoded = [decode(u) for u in deaggregate(KinesisRecord(data, seq, key))]
    return {(r.document_id, r.version) for r in decoded if isinstance(r, RevisionDetails)}


def last_user_record(records: list[tuple[str, bytes, str, float]]) -> tuple[str, int]:
    seq, data, key, _ = records[-1]
    return seq, len(deaggregate(KinesisRecord(data, seq, key))) - 1


# -- continuous, until caught up ------------------------------------------------------------------


def test_every_revision_once_over_three_shards_with_checkpoints_at_the_ends() -> None:
    t, sim, sink, metrics = FakeTime(T0), simulation(60, shards=3), Sink(), InMemoryMetrics()
    kinesis = FakeKinesis(t, 3)
    put_simulation(kinesis, sim)
    store = InMemoryCheckpointStore()

    report = make_worker(kinesis, t, sink, store, metrics).run(until_caught_up=True)

    assert report.reason == "caught-up"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    for shard_id, shard in kinesis.shards.items():
        seq, sub = last_user_record(shard["records"])
        assert store.get(STREAM, shard_id) == Checkpoint(shard_id, seq, sub)
        assert report.shards[shard_id].checkpoint == (seq, sub)
        assert report.shards[shard_id].millis_behind_latest == 0
        assert metrics.gauges[("stream_lag_ms", (("shard", shard_id),))] == 0
        assert ("iterator_age_ms", (("shard", shard_id),)) in metrics.gauges
        polls = [
            when
            for when, op, p in kinesis.calls
            if op == "get_records" and p["ShardIterator"].startswith(shard_id)
        ]
        assert all(b - a >= 0.2 for a, b in itertools.pairwise(polls))  # ≤ 5 GetRecords/s/shard
    assert report.records == sum(len(s["records"]) for s in kinesis.shards.values())
    assert sorted(sink.released) == sorted(kinesis.shards)  # every shard read is released on return
    assert {p["Limit"] for p in kinesis.requests("get_records")} <= set(range(2, 7))


def test_restart_resumes_at_the_checkpoint_and_redelivers_nothing() -> None:
    t, sim, store = FakeTime(T0), simulation(60, shards=2), InMemoryCheckpointStore()
    kinesis = FakeKinesis(t, 2)
    put_simulation(kinesis, sim)
    first, second = Sink(), Sink()
    worker = make_worker(kinesis, t, first, store)
    worker.on_progress = lambda status: worker.stop() if sum(first.effects.values()) >= 30 else None

    assert worker.run().reason == "stopped"
    saved = store.all(STREAM)
    assert saved and all(cp.sequence_number for cp in saved.values())
    calls_before = len(kinesis.calls)
    # a new process: a new pipeline with an empty de-duplication store, the same checkpoints
    assert make_worker(kinesis, t, second, store).run(until_caught_up=True).reason == "caught-up"

    total = first.effects + second.effects
    assert set(total) == expected(sim) and set(total.values()) == {1}
    resumed = [p for _, op, p in kinesis.calls[calls_before:] if op == "get_shard_iterator"]
    assert {p["ShardId"]: p["ShardIteratorType"] for p in resumed if p["ShardId"] in saved} == dict.fromkeys(
        saved, "AT_SEQUENCE_NUMBER"
    )


# -- halts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [VerificationAction.DELIVER, VerificationAction.DEAD_LETTER])
def test_a_halted_batch_is_read_again_from_its_checkpoint_inside_the_aggregate(
    action: VerificationAction,
) -> None:
    t, sim, sink, store = FakeTime(T0), simulation(40), Sink(), InMemoryCheckpointStore()
    kinesis = FakeKinesis(t, 1)
    put_simulation(kinesis, sim)
    # a revision that is not first in its block's aggregate fails 5 times: two halted batches
    block = next(b for b in sim.journal.blocks if len(b.revisions) >= 2)
    victim = (block.revisions[1].document_id, block.revisions[1].version)
    sink.fail_on[victim] = 5
    seen: list[tuple[tuple[str, int] | None, str]] = []
    worker = make_worker(kinesis, t, sink, store, verification_action=action, batch_min=50, batch_max=50)
    worker.on_progress = lambda s: seen.append((s.checkpoint, s.halt_reason))

    assert worker.run(until_caught_up=True).reason == "caught-up"

    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    halted = [cp for cp, reason in seen if reason]
    assert len(halted) == 2 and halted[0] == halted[1]
    assert halted[0] is not None
    if action is VerificationAction.DELIVER:  # no gate: inside the aggregate, after its first user record
        assert halted[0][1] >= 1
    else:  # the in-memory gate: the block summary (the aggregate's first user record) holds until the
        # victim is finished - a restart must read it again, or the victim could not be verified
        records = kinesis.shards["shardId-000000000000"]["records"]
        at = next(
            i for i, (seq, data, key, _) in enumerate(records) if victim in revisions_in(seq, data, key)
        )
        assert halted[0] == last_user_record(records[:at])
    rereads = [
        p for p in kinesis.requests("get_shard_iterator") if p["ShardIteratorType"] == "AT_SEQUENCE_NUMBER"
    ]
    assert [p["StartingSequenceNumber"] for p in rereads] == [halted[0][0]] * 2
    assert t.slept and max(t.slept) <= 30


def test_a_halt_before_any_checkpoint_rereads_from_the_first_record_even_under_latest() -> None:
    t, sim, sink = FakeTime(T0), simulation(20), Sink()
    kinesis = FakeKinesis(t, 1)
    first = sim.ledger.revisions[0]
    sink.fail_on[(first.document_id, first.version)] = 3
    worker = make_worker(kinesis, t, sink, start=LATEST)
    started = [False]

    def put_after_start(status: Any) -> None:
        if not started[0]:
            started[0] = True
            put_simulation(kinesis, sim)

    worker.on_progress = put_after_start
    assert worker.run(max_idle=3).reason == "idle"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    kinds = [p["ShardIteratorType"] for p in kinesis.requests("get_shard_iterator")]
    assert kinds[0] == "LATEST" and "AT_SEQUENCE_NUMBER" in kinds


def test_records_held_back_by_the_reorder_policy_are_delivered_before_the_shard_ends() -> None:
    t, sim, store = FakeTime(T0), simulation(40), InMemoryCheckpointStore()
    kinesis = FakeKinesis(t, 1)
    # lose one block's aggregate: later versions of its documents wait for the missing ones
    lost = next(
        d
        for d in sim.deliveries[len(sim.deliveries) // 2 :]
        if any(r.version >= 1 for r in deaggregated_revisions(d.data)) and len(d.records) > 1
    )
    for d in sim.deliveries:
        if d is not lost:
            kinesis.put(d.shard_id, d.data, d.partition_key)
    kinesis.split_all()  # the shard is closed: it ends once everything read is finished
    sink = Sink()
    worker = make_worker(kinesis, t, sink, store, late_policy=LatePolicy.REORDER)
    started = t.now

    assert worker.run(until_caught_up=True).reason == "caught-up"

    missing = {(r.document_id, r.version) for r in deaggregated_revisions(lost.data)}
    assert set(sink.effects) == expected(sim) - missing and set(sink.effects.values()) == {1}
    assert t.now - started >= 30.0  # the held revisions waited out the reorder window (30 s)
    assert store.get(STREAM, "shardId-000000000000").shard_ended  # type: ignore[union-attr]


def deaggregated_revisions(data: bytes) -> list[RevisionDetails]:
    users = deaggregate(KinesisRecord(data, "1"))
    return [r for r in (decode(u) for u in users) if isinstance(r, RevisionDetails)]


# -- resharding -----------------------------------------------------------------------------------------


def test_reshard_during_consumption_parents_before_children_and_shard_end_saved() -> None:
    t, sim, sink, store = (
        FakeTime(T0),
        simulation(80, shards=2),
        Sink(),
        InMemoryCheckpointStore(),
    )
    kinesis = FakeKinesis(t, 2)
    half = len(sim.deliveries) // 2
    for d in sim.deliveries[:half]:
        kinesis.put(d.shard_id, d.data, d.partition_key)
    worker = make_worker(kinesis, t, sink, store)
    children: dict[str, list[str]] = {}

    def reshard_once(status: Any) -> None:
        if not children and status.records_read:
            children.update(kinesis.split_all())
            for i, d in enumerate(sim.deliveries[half:]):
                kinesis.put(children[d.shard_id][i % 2], d.data, d.partition_key)

    worker.on_progress = reshard_once
    assert worker.run(until_caught_up=True).reason == "caught-up"

    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    for parent, kids in children.items():
        assert store.get(STREAM, parent) == Checkpoint(
            parent, *last_user_record(kinesis.shards[parent]["records"]), True
        )
        last_parent = max(i for i, s in enumerate(sink.order) if s == parent)
        for kid in kids:
            assert min(i for i, s in enumerate(sink.order) if s == kid) > last_parent
        assert sink.released.index(parent) < min(sink.released.index(k) for k in kids)


def test_after_a_restart_ended_parents_are_not_read_and_children_start_at_their_beginning() -> None:
    t, sim, store = FakeTime(T0), simulation(60, shards=1), InMemoryCheckpointStore()
    kinesis = FakeKinesis(t, 1)
    half = len(sim.deliveries) // 2
    for d in sim.deliveries[:half]:
        kinesis.put(d.shard_id, d.data, d.partition_key)
    (kids,) = kinesis.split_all().values()
    for i, d in enumerate(sim.deliveries[half:]):
        kinesis.put(kids[i % 2], d.data, d.partition_key)
    first = Sink()
    worker = make_worker(kinesis, t, first, store)
    worker.on_progress = lambda s: (
        worker.stop() if s.shard_id == "shardId-000000000000" and s.finished else None
    )
    assert worker.run().reason == "stopped"
    assert store.get(STREAM, "shardId-000000000000").shard_ended  # type: ignore[union-attr]
    assert not set(first.order) & set(kids)
    before = len(kinesis.calls)

    second = Sink()  # restarted with LATEST: the children of a finished parent still start at their beginning
    assert (
        make_worker(kinesis, t, second, store, start=LATEST).run(until_caught_up=True).reason == "caught-up"
    )
    assert set(first.effects + second.effects) == expected(sim)
    assert set((first.effects + second.effects).values()) == {1}
    iterators = [p for _, op, p in kinesis.calls[before:] if op == "get_shard_iterator"]
    assert {p["ShardId"]: p["ShardIteratorType"] for p in iterators} == dict.fromkeys(kids, "TRIM_HORIZON")


# -- modes ------------------------------------------------------------------------------------------------


def test_bounded_export_stops_each_shard_at_end_time_and_exits() -> None:
    t, before, after = (
        FakeTime(T0),
        simulation(30, shards=2, seed=1),
        simulation(30, shards=2, seed=2),
    )
    kinesis = FakeKinesis(t, 2)
    put_simulation(kinesis, before)
    t.now += 60
    end = datetime.fromtimestamp(t.now, UTC)
    t.now += 60
    put_simulation(kinesis, after)
    sink, store = Sink(), InMemoryCheckpointStore()

    report = make_worker(kinesis, t, sink, store, end_time=end).run()

    assert report.reason == "finished"
    assert set(sink.effects) == expected(before)
    assert {s.end_reason for s in report.shards.values()} == {"end-time"}
    assert not any(cp.shard_ended for cp in store.all(STREAM).values())  # open shards never "end"


def test_bounded_export_stops_at_control_completed_and_others_at_their_tip() -> None:
    t, sim, later = (
        FakeTime(T0),
        simulation(30, shards=2, seed=4),
        simulation(10, shards=1, seed=9),
    )
    kinesis = FakeKinesis(t, 2)
    put_simulation(kinesis, sim)
    (done,) = [d for d in sim.deliveries if holds_completed(d.data)]
    put_simulation(kinesis, later, lambda _: done.shard_id)  # a new QLDB stream after COMPLETED
    sink = Sink()
    end = datetime.fromtimestamp(t.now + 3600, UTC)

    report = make_worker(kinesis, t, sink, end_time=end).run()

    assert report.reason == "finished"
    assert set(sink.effects) == expected(sim)
    assert report.shards[done.shard_id].end_reason == "completed"
    assert {s.end_reason for s in report.shards.values()} == {"completed", "at-tip"}


def test_catch_up_starts_at_the_timestamp_then_keeps_going() -> None:
    t, old, new = FakeTime(T0), simulation(20, seed=1), simulation(20, seed=2)
    kinesis = FakeKinesis(t, 1)
    put_simulation(kinesis, old)
    t.now += 10
    since = datetime.fromtimestamp(t.now, UTC)
    put_simulation(kinesis, new)
    sink = Sink()
    worker = make_worker(kinesis, t, sink, start=StartPosition.at_timestamp(since))

    assert worker.run(max_idle=5).reason == "idle"  # continuous: it only returns because it was idle

    assert set(sink.effects) == expected(new)
    assert t.now - since.timestamp() >= 5


# -- Kinesis and store faults -------------------------------------------------------------------------


def test_throttling_expired_iterators_and_a_store_outage_are_retried_per_shard() -> None:
    t, sim, sink = FakeTime(T0), simulation(40, shards=2), Sink()
    kinesis = FakeKinesis(t, 2)
    put_simulation(kinesis, sim)
    kinesis.fail("get_records", "ProvisionedThroughputExceededException", 3)
    kinesis.fail("get_records", "ExpiredIteratorException", 1, after=2)
    kinesis.fail("list_shards", "LimitExceededException", 8)  # the whole budget: RetryableError

    class FlakyStore(InMemoryCheckpointStore):
        failures = 2

        def save(self, stream: str, checkpoint: Checkpoint) -> None:
            if self.failures:
                self.failures -= 1
                raise RetryableError("DynamoDB is throttling", retry_after=2.0)
            super().save(stream, checkpoint)

    store = FlakyStore()
    worker = make_worker(kinesis, t, sink, store)
    with pytest.raises(RetryableError, match="ListShards: still throttled after 8 attempts"):
        worker.run()  # the first listing: nothing to fall back on
    assert worker.run(until_caught_up=True).reason == "caught-up"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    for shard_id, shard in kinesis.shards.items():
        assert store.get(STREAM, shard_id) == Checkpoint(shard_id, *last_user_record(shard["records"]))
    kinds = [p["ShardIteratorType"] for p in kinesis.requests("get_shard_iterator")]
    assert "AFTER_SEQUENCE_NUMBER" in kinds  # the expired iterator was renewed after the last record


def test_a_missing_stream_is_an_input_error() -> None:
    t = FakeTime(T0)
    worker = make_worker(FakeKinesis(t, 1), t, Sink())
    worker.stream_name = worker.shards.stream_name = "nope"
    with pytest.raises(InputError, match="stream nope does not exist at memory://kinesis"):
        worker.run()


def test_stop_before_run_returns_at_once_and_releases_nothing() -> None:
    t, sink = FakeTime(T0), Sink()
    worker = make_worker(FakeKinesis(t, 2), t, sink)
    worker.stop()
    report = worker.run()
    assert report.reason == "stopped" and worker.stopping
    assert set(report.shards) == {"shardId-000000000000", "shardId-000000000001"}
    assert sink.released == []


# -- pieces ---------------------------------------------------------------------------------------------


def holds_completed(data: bytes) -> bool:
    """Whether a Kinesis record holds CONTROL COMPLETED, read with amazon-ion (not qldbstream's decoder)."""
    from amazon.ion import simpleion

    for user in deaggregate(KinesisRecord(data, "1")):
        value = simpleion.loads(user.data)
        if value.get("recordType") == "CONTROL" and value["payload"].get("controlRecordType") == "COMPLETED":
            return True
    return False


def test_the_pipeline_stops_a_batch_at_control_completed_and_covered() -> None:
    sim = simulation(5)
    records = [KinesisRecord(d.data, str(i + 1)) for i, d in enumerate(sim.deliveries)]
    assert holds_completed(records[-1].data) and not any(holds_completed(r.data) for r in records[:-1])
    after = KinesisRecord(simulation(2, seed=9).deliveries[0].data, str(len(records) + 1))
    sink = Sink()
    app = App(Settings(), handlers=[sink])
    pipeline = app.pipeline()
    result = pipeline.process("s", [*records, after], stop_at_completed=True)
    assert result.completed is records[-1] and result.records == len(records)
    assert result.finished == len(records) and result.first_unfinished is None
    assert pipeline.process("s", records[:-1], stop_at_completed=True).completed is None
    assert app.pipeline().process("s", records).completed is None  # only when asked
    aggregate = next(r for r in records if deaggregate(r)[0].aggregated and len(deaggregate(r)) > 1)
    last = len(deaggregate(aggregate)) - 1
    assert covered(aggregate.data, last) and not covered(aggregate.data, last - 1)
    assert covered(records[0].data, 0) and not covered(records[0].data, -1)
    assert covered(aggregate.data[:-1] + b"\x00", 0)  # a corrupt aggregate is dead-lettered whole


def test_options_from_settings() -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
    s = Settings(
        stream_name="s", application_name="app", start_position="AT_TIMESTAMP", start_time=start, end_time=end
    )
    options = WorkerOptions.from_settings(s, poll_interval=0.1)
    assert options.start == StartPosition.at_timestamp(start) and options.end_time == end
    assert options.stops_at_completed and options.checkpoint_key == "app/s" and options.poll_interval == 0.1
    assert WorkerOptions.from_settings(Settings(start_position="LATEST")).start == LATEST
    assert not WorkerOptions().stops_at_completed
    with pytest.raises(ConfigurationError, match="contradicts"):
        WorkerOptions.from_settings(Settings(start_position="LATEST", start_time=start))
    with pytest.raises(ConfigurationError, match="batch sizes"):
        WorkerOptions(batch_min=5, batch_max=20_000)
    with pytest.raises(ConfigurationError, match="time zone"):
        WorkerOptions(end_time=datetime(2024, 1, 1))
    with pytest.raises(ConfigurationError, match="no stream to read"):
        Worker.from_app(App(Settings(), handlers=[]), InMemoryCheckpointStore())


def test_first_signal_stops_the_worker_and_a_second_exits_at_once() -> None:
    t = FakeTime(T0)
    worker = make_worker(FakeKinesis(t, 1), t, Sink())
    exits: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with run_command.stop_on_signals(worker, exit_now=exits.append):
        signal.raise_signal(signal.SIGTERM)
        assert worker.stopping and exits == []
        signal.raise_signal(signal.SIGINT)
        assert exits == [130]
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_errors_are_one_clear_line() -> None:
    parser = argparse.ArgumentParser(prog="qldbstream")
    run_command.register(parser.add_subparsers())
    assert "examples:" in parser._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    args = parser.parse_args(["run", "--stream", "s", "--from", "yesterday"])
    with pytest.raises(InputError, match="--from 'yesterday' is not an ISO 8601 timestamp"):
        run_command.run(args)
    args = parser.parse_args(["run", "--until", "2024-01-01T00:00:00"])
    with pytest.raises(InputError, match="needs a time zone"):
        run_command.run(args)
