"""The KCL record processor against a fake MultiLangDaemon speaking the real JSON line protocol over pipes.

The processor runs inside amazon-kclpy's own ``KCLProcess`` loop (our :class:`GuardedKCLProcess`) in a
thread, reading and writing OS pipes; the test plays the daemon (local-aws-stack.md, appendix B): it
sends ``initialize``/``processRecords``/``leaseLost``/``shardEnded``/``shutdownRequested``, answers every
checkpoint request (optionally with an error such as ``ThrottlingException``) and waits for the status
reply. Time is a fake clock: backoffs advance it instead of sleeping. One test runs the real
``python -m qldbstream.kcl`` process to check that nothing but the protocol reaches its stdout.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.config import load_settings
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails, decode, decode_bytes
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError, RetryableError
from qldbstream.core.records import KinesisRecord
from qldbstream.core.records import Position as RecordPosition
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore
from qldbstream.runtimes.kcl import (
    EXIT_ADAPTER_BUG,
    CheckpointFailure,
    GuardedKCLProcess,
    KclRecordProcessor,
    ProcessorOptions,
    kinesis_record,
)
from qldbstream.runtimes.kcl_daemon import (
    DaemonOptions,
    kcl_properties,
    prometheus_endpoint,
    render_properties,
)
from tests.integration.kcl_worker_sink import effect_key
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.servers import free_port
from tests.support.streams import kinesis_records, simulation

REPO = Path(__file__).resolve().parents[2]
SHARD = "shardId-000000000000"
Position = tuple[str | None, int | None]


# --- fakes -------------------------------------------------------------------------------------------


class Sink(Handler):
    """Takes every record (CONTROL too), records the effect keys in order; fails while ``failures`` lasts."""

    name = "sink"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.effects: list[str] = []
        self.released: list[str] = []

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RetryableError("the sink is down")
        self.effects.extend(k for k in map(effect_key, records) if k is not None)

    def shard_released(self, shard_id: str) -> None:
        self.released.append(shard_id)


class FailingStore(InMemoryDedupeStore):
    """A de-duplication store that raises (as DynamoDB down would) for its first ``failures`` reads."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def done(self, handler: str, keys: Sequence[str]) -> set[str]:
        if self.failures > 0:
            self.failures -= 1
            raise RetryableError("the de-duplication store is down")
        return super().done(handler, keys)


class FakeDaemon:
    """The daemon's side of the protocol, over two OS pipes, with the processor in a thread."""

    def __init__(self, processor: Any) -> None:
        to_proc_r, to_proc_w = os.pipe()
        from_proc_r, from_proc_w = os.pipe()
        self._to_proc = os.fdopen(to_proc_w, "w", buffering=1)
        self._from_proc = os.fdopen(from_proc_r, "r")
        proc_in, proc_out = os.fdopen(to_proc_r, "r"), os.fdopen(from_proc_w, "w")
        self.errors = io.StringIO()
        self.exit_code: int | str | None = None
        self.transcript: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        kcl = GuardedKCLProcess(processor, input_file=proc_in, output_file=proc_out, error_file=self.errors)

        def run() -> None:
            try:
                kcl.run()
            except SystemExit as exc:
                self.exit_code = exc.code
            finally:
                proc_out.close()
                proc_in.close()

        def read() -> None:
            for line in self._from_proc:
                self._lines.put(line)
            self._lines.put("")  # EOF

        self._thread = threading.Thread(target=run, daemon=True)
        self._reader = threading.Thread(target=read, daemon=True)
        self._thread.start()
        self._reader.start()

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message)
        self.transcript.append(f">> {line}")
        self._to_proc.write(line + "\n")

    def _receive(self) -> dict[str, Any] | None:
        while True:
            line = self._lines.get(timeout=20)
            if line == "":
                return None
            if line.strip():
                self.transcript.append(f"<< {line.strip()}")
                message: dict[str, Any] = json.loads(line)
                return message

    def call(
        self, message: dict[str, Any], answer: Callable[[str | None, int | None], str | None] | None = None
    ) -> list[Position]:
        """Send one action; answer each checkpoint request; return them when the status reply comes."""
        self._send(message)
        requested: list[Position] = []
        while True:
            reply = self._receive()
            if reply is None:
                raise EOFError(f"the processor exited ({self.exit_code}):\n{self.errors.getvalue()}")
            if reply["action"] == "checkpoint":
                seq, sub = reply["sequenceNumber"], reply["subSequenceNumber"]
                requested.append((seq, sub))
                error = answer(seq, sub) if answer else None
                shard_end = message["action"] == "shardEnded" and seq is None
                response = {
                    "action": "checkpoint",
                    "sequenceNumber": "SHARD_END" if shard_end and not error else seq,
                    "subSequenceNumber": sub,
                }
                if error:
                    response["error"] = error
                self._send(response)
                continue
            assert reply == {"action": "status", "responseFor": message["action"]}, self.transcript
            return requested

    def initialize(self, shard: str = SHARD) -> None:
        self.call(
            {
                "action": "initialize",
                "shardId": shard,
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )

    def process(self, records: Sequence[dict[str, Any]], **kwargs: Any) -> list[Position]:
        message = {"action": "processRecords", "millisBehindLatest": 0, "records": list(records)}
        return self.call(message, **kwargs)

    def close(self) -> None:
        self._to_proc.close()
        self._thread.join(timeout=10)
        self._reader.join(timeout=10)
        assert not self._thread.is_alive()


# --- helpers -----------------------------------------------------------------------------------------


def kcl_records(records: Sequence[KinesisRecord]) -> list[dict[str, Any]]:
    """What the daemon sends for ``records``: one message per *user* record (it deaggregates itself)."""
    out = []
    for kr in records:
        for user in deaggregate(kr):
            out.append(
                {
                    "action": "record",
                    "data": base64.b64encode(user.data).decode(),
                    "partitionKey": user.partition_key,
                    "sequenceNumber": kr.sequence_number,
                    "subSequenceNumber": user.sub_sequence_number,
                    "approximateArrivalTimestamp": int((kr.approximate_arrival_timestamp or 0) * 1000),
                }
            )
    return out


def stream(transactions: int = 30, **kwargs: Any) -> tuple[list[dict[str, Any]], Any]:
    sim = simulation(transactions, **kwargs)
    ((_, records),) = kinesis_records(sim).items()
    return kcl_records(records), sim


def last(records: Sequence[dict[str, Any]]) -> Position:
    return records[-1]["sequenceNumber"], records[-1]["subSequenceNumber"]


class DurableGate(InMemoryGateStore):
    """The in-memory gate store standing in for DynamoDB's (durable, shared)."""

    @property
    def durable(self) -> bool:
        return True


def make(
    sink: Sink,
    t: FakeTime,
    *,
    dlq: MemoryDLQ | None = None,
    store: InMemoryDedupeStore | None = None,
    options: ProcessorOptions | None = None,
    parent_alive: Callable[[], bool] = lambda: True,
    late_policy: LatePolicy = LatePolicy.DELIVER_LATE,
    gate: InMemoryGateStore | None = None,
    metrics: InMemoryMetrics | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> tuple[KclRecordProcessor, FakeDaemon]:
    pipeline = Pipeline(
        [sink],
        dlq=dlq or MemoryDLQ(),
        store=store if store is not None else InMemoryDedupeStore(),
        settings=PipelineSettings(
            retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05),
            breaker_failures=3,
            breaker_recovery=10.0,
            late_policy=late_policy,
        ),
        clock=t.clock,
        sleep=t.sleep,
        # one record processor per shard: the deployed KCL parks in DynamoDB (durable); in memory a
        # block summary would hold the checkpoint until its revisions came (docs/delivery.md)
        gate_store=gate if gate is not None else DurableGate(),
        metrics=metrics,
        wall_clock=wall_clock,
    )
    processor = KclRecordProcessor(
        pipeline,
        [sink],
        options or ProcessorOptions(),
        clock=t.clock,
        sleep=t.sleep,
        parent_alive=parent_alive,
        wall_clock=wall_clock,
    )
    daemon = FakeDaemon(processor)
    daemon.initialize()
    return processor, daemon


def decode_record(record: dict[str, Any]) -> JournalRecord:
    (user,) = deaggregate(KinesisRecord(base64.b64decode(record["data"]), record["sequenceNumber"]))
    return decode(user)


def before(position: Position, record: KinesisRecord) -> bool:
    """Whether ``position`` (a checkpoint) is strictly before ``record``."""
    seq, sub = position
    assert seq is not None and sub is not None
    return (int(seq), sub) < (int(record.sequence_number), record.sub_sequence_number or 0)


def revisions(sink: Sink) -> list[str]:
    return [k for k in sink.effects if k.startswith("rev#")]


# --- tests -------------------------------------------------------------------------------------------


def test_kinesis_record_keeps_the_sub_sequence_number_and_epoch_arrival_time() -> None:
    class Rec:
        binary_data = b"\xe0\x01\x00\xea"
        sequence_number = "49590338271490256608559692538361571095921575989136588898"
        sub_sequence_number = 3
        partition_key = "ab" * 32
        timestamp_millis = 1_700_000_000_123

    record = kinesis_record(Rec(), SHARD)
    assert record.sub_sequence_number == 3 and record.shard_id == SHARD
    assert record.approximate_arrival_timestamp == pytest.approx(1_700_000_000.123)
    assert record.position.sub_sequence_number == 3
    (user,) = deaggregate(record)  # a user record the KCL already deaggregated keeps its own number
    assert (user.sequence_number, user.sub_sequence_number) == (Rec.sequence_number, 3)


def test_each_batch_is_checkpointed_at_its_last_user_record_and_every_effect_lands_once() -> None:
    records, sim = stream(30)
    assert len({r["sequenceNumber"] for r in records}) < len(records), "needs aggregated records"
    sink, t = Sink(), FakeTime()
    _, daemon = make(sink, t)
    batches = [records[i : i + 7] for i in range(0, len(records), 7)]
    for batch in batches:
        assert daemon.process(batch) == [last(batch)]
    assert daemon.process([]) == []  # an empty call (callProcessRecordsEvenForEmptyRecordList): nothing to do
    daemon.close()
    assert sorted(revisions(sink)) == sorted(
        {f"rev#{r.document_id}#{r.version}" for r in sim.ledger.revisions}
    )
    assert len(sink.effects) == len(set(sink.effects))
    assert daemon.exit_code is None and daemon.errors.getvalue() == ""


class GaugeLog(InMemoryMetrics):
    """Every gauge set, in order (the processor's own and the pipeline's)."""

    def __init__(self) -> None:
        super().__init__()
        self.set: list[tuple[str, float]] = []

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self.set.append((name, value))
        super().gauge(name, value, **dimensions)


def test_the_lag_gauges_use_the_daemons_lag_and_the_injected_wall_clock() -> None:
    records, _ = stream(5)
    newest = records[-1]["approximateArrivalTimestamp"] / 1000
    metrics, sink, t = GaugeLog(), Sink(), FakeTime()
    _, daemon = make(sink, t, metrics=metrics, wall_clock=lambda: newest + 2.5)
    daemon.process(records)
    daemon.close()
    ages = [value for name, value in metrics.set if name == "iterator_age_ms"]
    lags = [value for name, value in metrics.set if name == "stream_lag_ms"]
    assert lags == [0.0]  # the daemon's millisBehindLatest
    # the processor's gauge (on arrival) and the pipeline's (per batch): both from the injected clock
    assert len(ages) >= 2 and ages == pytest.approx([2500.0] * len(ages))


def test_a_halted_batch_is_kept_and_retried_by_the_processor_never_checkpointed_past() -> None:
    records, sim = stream(30)
    sink, t = Sink(failures=10), FakeTime()
    processor, daemon = make(sink, t, options=ProcessorOptions(call_budget=2.0, halt_backoff=0.5))
    first, second = records[:10], records[10:]
    assert daemon.process(first) == []  # the sink is down: nothing finished, nothing checkpointed
    assert processor.last_result is not None and processor.last_result.halted
    assert len(processor.pending) == len(first)
    assert daemon.process(second) == []  # queued behind the unfinished records, nothing moves
    assert len(processor.pending) == len(records)
    assert sink.effects == []
    t.now += 60  # the breaker lets a trial through; the next (empty) call retries everything
    sink.failures = 0
    assert daemon.process([]) == [last(records)]
    assert processor.pending == []
    daemon.close()
    expected = {f"rev#{r.document_id}#{r.version}" for r in sim.ledger.revisions}
    assert sorted(revisions(sink)) == sorted(expected)
    assert len(sink.effects) == len(set(sink.effects))


def test_retries_within_one_call_are_bounded_by_its_budget() -> None:
    records, _ = stream(10)
    sink, t = Sink(failures=4), FakeTime()
    processor, daemon = make(
        sink, t, options=ProcessorOptions(call_budget=30.0, halt_backoff=0.5, halt_backoff_cap=1.0)
    )
    # Two failures per pipeline attempt (retry max_attempts=2): the first two tries halt, the third lands,
    # all within the call, because each backoff is due before the budget runs out.
    started = t.now
    assert daemon.process(records) == [last(records)]
    assert processor.halts == 0 and processor.pending == []
    assert t.now - started < 30.0
    daemon.close()


def test_a_checkpoint_stops_at_the_record_before_the_one_that_is_stuck() -> None:
    records, _ = stream(20)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t, options=ProcessorOptions(call_budget=0.0))
    head = records[:6]
    assert daemon.process(head) == [last(head)]
    sink.failures = 100  # down from here on
    assert daemon.process(records[6:12]) == []
    assert processor.checkpointed == last(head)
    assert [r.sequence_number for r in processor.pending] == [r["sequenceNumber"] for r in records[6:12]]
    daemon.close()


def test_lease_lost_never_checkpoints_and_releases_the_shard() -> None:
    records, _ = stream(10)
    sink, t = Sink(failures=100), FakeTime()
    processor, daemon = make(sink, t, options=ProcessorOptions(call_budget=0.0))
    assert daemon.process(records) == []
    assert daemon.call({"action": "leaseLost"}) == []
    assert processor.pending == [] and processor.lease_gone
    assert sink.released == [SHARD]
    daemon.close()
    assert sink.effects == []


def test_shard_end_finishes_everything_then_checkpoints_shard_end() -> None:
    records, sim = stream(20)
    sink, t = Sink(failures=6), FakeTime()
    processor, daemon = make(sink, t, options=ProcessorOptions(call_budget=0.0, halt_backoff=0.5))
    assert daemon.process(records) == []  # halted
    # shardEnded blocks (fake sleeps) until the sink is back, then checkpoints the records and SHARD_END.
    assert daemon.call({"action": "shardEnded"}) == [last(records), (None, None)]
    assert processor.pending == [] and sink.released == [SHARD]
    assert t.slept, "it waited for the sink"
    daemon.close()
    assert sorted(revisions(sink)) == sorted(
        {f"rev#{r.document_id}#{r.version}" for r in sim.ledger.revisions}
    )


def test_records_held_back_by_the_reorder_policy_finish_before_shard_end() -> None:
    # aggregated: a block and its revisions travel together, so only the reorder policy holds
    # (without aggregation the delivery gate puts each revision after its block summary first)
    records, _ = stream(60, aggregate=True, reorder=8, seed=0)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t, late_policy=LatePolicy.REORDER)
    sent: list[dict[str, Any]] = []
    for i in range(0, len(records), 5):  # up to the batch after which a revision is held back
        daemon.process(records[i : i + 5])
        sent += records[i : i + 5]
        if processor.holding:
            break
    assert processor.holding, "the reorder window held a revision back"
    assert daemon.process([]) == [] and processor.holding  # an empty call inside the window: still held
    # The shard ends before the missing version comes: wait out the window (fake time), deliver, end.
    started = t.now
    asked = daemon.call({"action": "shardEnded"})
    assert asked[-1] == (None, None) and not processor.holding
    assert t.now - started >= 30.0 - 1.0  # the reorder window
    daemon.close()
    wanted = {effect_key(decode_record(r)) for r in sent} - {None}
    assert {k for k in sink.effects if k.startswith("rev#")} == {
        k for k in wanted if k and k.startswith("rev#")
    }


def test_shard_end_with_nothing_pending_checkpoints_shard_end_at_once() -> None:
    records, _ = stream(10)
    sink, t = Sink(), FakeTime()
    _, daemon = make(sink, t)
    assert daemon.process(records) == [last(records)]
    assert daemon.call({"action": "shardEnded"}) == [(None, None)]
    assert sink.released == [SHARD]
    daemon.close()


def test_shutdown_requested_checkpoints_what_a_throttled_checkpoint_left_unsaved() -> None:
    records, _ = stream(10)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t)
    tries = ProcessorOptions().checkpoint_tries
    asked = daemon.process(records, answer=lambda s, n: CheckpointFailure.THROTTLED.value)
    assert asked == [last(records)] * tries  # retried with backoff, then left for later
    assert processor.unsaved == last(records) and processor.checkpointed is None
    assert daemon.call({"action": "shutdownRequested"}) == [last(records)]
    assert processor.checkpointed == last(records) and processor.unsaved is None
    daemon.close()


def test_a_throttled_checkpoint_is_retried_with_backoff() -> None:
    records, _ = stream(10)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t)
    answers = iter(["ThrottlingException", "ThrottlingException", None])
    assert daemon.process(records, answer=lambda s, n: next(answers)) == [last(records)] * 3
    assert processor.checkpointed == last(records)
    assert len(t.slept) == 2 and all(0 < d <= 2.0 for d in t.slept)
    daemon.close()


@pytest.mark.parametrize("error", ["ShutdownException", "InvalidStateException"])
def test_a_lost_lease_at_checkpoint_stops_checkpointing_and_processing(error: str) -> None:
    records, _ = stream(20)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t)
    first, rest = records[:8], records[8:]
    assert daemon.process(first, answer=lambda s, n: error) == [last(first)]  # tried once, not retried
    assert processor.lease_gone
    effects = list(sink.effects)
    assert daemon.process(rest) == []  # ignored: another worker owns the shard
    assert sink.effects == effects
    assert daemon.call({"action": "shutdownRequested"}) == []
    assert daemon.call({"action": "leaseLost"}) == []
    daemon.close()


def test_poison_records_are_dead_lettered_and_checkpointed_past() -> None:
    records, sim = stream(30, tampers=("Transactions#2:data.amount",))
    sink, t, dlq = Sink(), FakeTime(), MemoryDLQ()
    _, daemon = make(sink, t, dlq=dlq)
    # A corrupt KPL aggregate: the KCL cannot deaggregate it (bad MD5) and hands it over whole.
    good = records[0]
    corrupt = dict(
        good, data=base64.b64encode(b"\xf3\x89\x9a\xc2" + b"\x00" * 20).decode(), subSequenceNumber=0
    )
    batch = [corrupt, *records[1:]]
    assert daemon.process(batch) == [last(batch)]
    daemon.close()
    stages = sorted(letter.stage for letter in dlq.letters)
    assert stages == ["deaggregate", "verify"]
    (failure,) = sim.expected.failing("V2")
    assert f"rev#{failure.document_id}#{failure.version}" not in sink.effects
    letter = next(letter for letter in dlq.letters if letter.stage == "verify")
    assert letter.shard_id == SHARD and letter.sub_sequence_number is not None and letter.user_record_data


def test_a_dlq_outage_holds_the_checkpoint_before_the_poison_record_until_it_is_back() -> None:
    records, _ = stream(30, tampers=("Transactions#2:data.amount",))
    sink, t, dlq = Sink(), FakeTime(), MemoryDLQ()
    dlq.fail = True
    processor, daemon = make(sink, t, dlq=dlq, options=ProcessorOptions(call_budget=0.0))
    asked = daemon.process(records)
    assert processor.pending, "the poison record and everything after it wait"
    poison = processor.pending[0]
    assert all(before(position, poison) for position in asked)
    dlq.fail = False
    t.now += 60
    assert daemon.process([]) == [last(records)]
    assert len(dlq.letters) == 1 and processor.pending == []
    daemon.close()


def test_a_pipeline_exception_is_a_halt_not_a_skip() -> None:
    records, _ = stream(10)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(
        sink, t, store=FailingStore(failures=1), options=ProcessorOptions(call_budget=0.0)
    )
    assert daemon.process(records) == []
    assert len(processor.pending) == len(records) and processor.halts == 1
    t.now += 60
    assert daemon.process([]) == [last(records)]
    daemon.close()
    assert daemon.exit_code is None


def test_a_full_backlog_blocks_the_call_until_it_drains() -> None:
    records, _ = stream(20)
    sink, t = Sink(failures=6), FakeTime()
    options = ProcessorOptions(call_budget=0.0, halt_backoff=0.5, max_pending=5)
    processor, daemon = make(sink, t, options=options)
    # More than max_pending records cannot be kept: the call does not return until they are finished.
    assert daemon.process(records) == [last(records)]
    assert processor.pending == [] and t.slept
    daemon.close()


def test_the_daemon_dying_while_a_call_blocks_ends_the_process() -> None:
    records, _ = stream(10)
    sink, t = Sink(failures=1000), FakeTime()
    alive = iter([True, True, False])
    _, daemon = make(
        sink, t, options=ProcessorOptions(call_budget=0.0), parent_alive=lambda: next(alive, False)
    )
    daemon.process(records)
    with pytest.raises(EOFError):
        daemon.call({"action": "shardEnded"})
    daemon.close()
    assert daemon.exit_code == EXIT_ADAPTER_BUG


def test_an_exception_escaping_the_adapter_exits_instead_of_being_swallowed() -> None:
    records, _ = stream(10)
    sink, t = Sink(), FakeTime()
    processor, daemon = make(sink, t)

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in the adapter")

    processor._observe = broken  # type: ignore[method-assign]
    with pytest.raises(EOFError):  # no status reply: kclpy did not get to say "done"
        daemon.process(records)
    daemon.close()
    assert daemon.exit_code == EXIT_ADAPTER_BUG
    assert sink.effects == []


def test_the_processor_process_keeps_stdout_for_the_protocol(tmp_path: Path) -> None:
    records, _ = stream(10)
    output = tmp_path / "noisy.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "QLDBSTREAM_HANDLERS": "tests.integration.kcl_worker_sink:noisy",
        "QLDBSTREAM_HANDLER_NOISY__OUTPUT": str(output),
        "QLDBSTREAM_DLQ": f"dir:{tmp_path / 'dlq'}",
        "QLDBSTREAM_LOG_FORMAT": "json",
    }
    messages = [
        {"action": "initialize", "shardId": SHARD, "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0},
        {"action": "processRecords", "millisBehindLatest": 0, "records": records},
        {"action": "shardEnded"},
    ]
    replies = [
        json.dumps(
            {
                "action": "checkpoint",
                "sequenceNumber": records[-1]["sequenceNumber"],
                "subSequenceNumber": records[-1]["subSequenceNumber"],
            }
        ),
        json.dumps({"action": "checkpoint", "sequenceNumber": "SHARD_END", "subSequenceNumber": None}),
    ]
    # The processor answers each action in order; the two checkpoint replies are queued up front (each is
    # read only when the processor asks for its checkpoint, as the daemon would answer).
    stdin = "\n".join(
        [json.dumps(messages[0]), json.dumps(messages[1]), replies[0], json.dumps(messages[2]), replies[1]]
    )
    done = subprocess.run(
        [sys.executable, "-m", "qldbstream.kcl"],
        input=stdin + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [
        json.loads(line) for line in done.stdout.splitlines() if line.strip()
    ]  # only JSON: else it raises
    assert lines == [
        {"action": "status", "responseFor": "initialize"},
        {
            "action": "checkpoint",
            "sequenceNumber": records[-1]["sequenceNumber"],
            "subSequenceNumber": records[-1]["subSequenceNumber"],
        },
        {"action": "status", "responseFor": "processRecords"},
        {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None},
        {"action": "status", "responseFor": "shardEnded"},
    ]
    assert "print() to stdout" in done.stderr and "child process writing to stdout" in done.stderr
    assert '"responseFor": "processRecords"}' in done.stderr  # the forged line went to stderr
    handled = [json.loads(line) for line in output.read_text().splitlines()]
    assert {"released": SHARD} in handled and sum("key" in h for h in handled) > 0


# --- the daemon's properties and the launcher (no Java needed) ---------------------------------------------


def test_properties_come_from_the_settings_and_keep_what_the_processor_relies_on() -> None:
    settings = load_settings(
        {
            "QLDBSTREAM_STREAM_NAME": "ledger-stream",
            "QLDBSTREAM_REGION": "eu-west-1",
            "QLDBSTREAM_APPLICATION_NAME": "ledger-app",
            "QLDBSTREAM_ENDPOINT_URL": "http://127.0.0.1:4567",
            "QLDBSTREAM_DYNAMODB_ENDPOINT_URL": "http://127.0.0.1:5000",
            "QLDBSTREAM_START_POSITION": "AT_TIMESTAMP",
            "QLDBSTREAM_START_TIME": "2024-03-01T09:00:00Z",
            "QLDBSTREAM_BATCH_MAX": "250",
        }
    )
    props = kcl_properties(
        settings,
        DaemonOptions(worker_id="w-1", metrics_level="summary", overrides={"failoverTimeMillis": "20000"}),
    )
    assert props["streamName"] == "ledger-stream" and props["applicationName"] == "ledger-app"
    assert (
        props["regionName"] == "eu-west-1"
        and props["workerId"] == "w-1"
        and props["metricsLevel"] == "SUMMARY"
    )
    assert props["kinesisEndpoint"] == "http://127.0.0.1:4567"  # the shared endpoint
    assert props["dynamoDBEndpoint"] == "http://127.0.0.1:5000"  # the per-service one wins
    assert props["initialPositionInStreamExtended"] == "1709283600" and "initialPositionInStream" not in props
    assert props["maxRecords"] == "250" and props["retrievalMode"] == "POLLING"
    assert props["failoverTimeMillis"] == "20000"
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert props["skipShardSyncAtWorkerInitializationIfLeasesExist"] == "true"
    assert props["executableName"] == f"{sys.executable} -m qldbstream.kcl"
    text = render_properties({**props, "odd": "C:\\path"})
    assert "streamName = ledger-stream\n" in text and "odd = C:\\\\path\n" in text


@pytest.mark.parametrize(
    ("environ", "overrides", "message"),
    [
        ({"QLDBSTREAM_REGION": "us-east-1"}, {}, "no stream"),
        ({"QLDBSTREAM_STREAM_NAME": "s"}, {}, "no region"),
        (
            {
                "QLDBSTREAM_STREAM_NAME": "s",
                "QLDBSTREAM_REGION": "r",
                "QLDBSTREAM_END_TIME": "2030-01-01T00:00:00Z",
            },
            {},
            "bounded export",
        ),
        (
            {"QLDBSTREAM_STREAM_NAME": "s", "QLDBSTREAM_REGION": "r"},
            {"callProcessRecordsEvenForEmptyRecordList": "false"},
            "must stay true",
        ),
        (
            {"QLDBSTREAM_STREAM_NAME": "s", "QLDBSTREAM_REGION": "r"},
            {"skipShardSyncAtWorkerInitializationIfLeasesExist": "false"},
            "drops QLDB",
        ),
        ({"QLDBSTREAM_STREAM_NAME": "s", "QLDBSTREAM_REGION": "r"}, {"bad key": "v"}, "one word"),
    ],
)
def test_properties_refuse_what_the_worker_cannot_run(
    environ: dict[str, str], overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        kcl_properties(load_settings(environ), DaemonOptions(overrides=overrides))


def run_cli(args: Sequence[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("QLDBSTREAM_", "AWS_", "KCL_", "JAVA_HOME"))
    }
    return subprocess.run(
        [sys.executable, "-m", "qldbstream.cli.kcl", *args],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_print_properties_prints_only_the_properties() -> None:
    done = run_cli(
        ["--print-properties", "--stream", "s", "--region", "us-east-1", "--set", "maxRecords=7"], {}
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    props = dict(line.split(" = ", 1) for line in lines)
    assert props["streamName"] == "s" and props["maxRecords"] == "7" and props["regionName"] == "us-east-1"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--region", "us-east-1"], {}, "no stream to read"),
        (
            ["--stream", "s", "--region", "r", "--java", "/nonexistent/java"],
            {},
            "no Java at '/nonexistent/java'",
        ),
        (
            ["--stream", "s", "--region", "r", "--jar-dir", "/tmp"],
            {},
            "run `make kcl` or `deploy/kcl/install.sh`",
        ),
        (["--stream", "s", "--region", "r", "--set", "nonsense"], {}, "expected KEY=VALUE"),
    ],
)
def test_the_launcher_fails_with_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    done = run_cli(args, env)
    assert done.returncode == 2
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("qldbstream kcl: ") and "warning" not in line
    ]
    assert len(errors) == 1 and message in errors[0], done.stderr


def test_the_launcher_forwards_sigterm_to_the_daemon_and_exits_0(tmp_path: Path) -> None:
    """A stand-in ``java`` records its arguments and exits 143 on SIGTERM, as the MultiLangDaemon does."""
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "amazon-kinesis-client-multilang-3.1.3.jar").write_bytes(b"PK")
    marker = tmp_path / "java.out"
    java = tmp_path / "java"
    java.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {marker}\n'
        f"trap 'echo TERM >> {marker}; exit 143' TERM\n"
        "while :; do sleep 0.05; done\n"
    )
    java.chmod(0o755)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qldbstream.cli.kcl",
            "--stream",
            "s",
            "--region",
            "us-east-1",
            "--java",
            str(java),
            "--jar-dir",
            str(jars),
            "--worker-id",
            "w",
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("QLDBSTREAM_")},
            "PYTHONPATH": str(REPO),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the launcher never started java"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    args, *rest = marker.read_text().splitlines()
    assert rest == ["TERM"]
    assert (
        f"-cp {jars.resolve()}/* software.amazon.kinesis.multilang.MultiLangDaemon --properties-file" in args
    )


def test_the_launcher_serves_the_processors_prometheus_metrics_summed() -> None:
    port, env = free_port(), {}
    with prometheus_endpoint(f"prometheus:{port}", env):
        directory = env["PROMETHEUS_MULTIPROC_DIR"]
        script = (
            "from qldbstream.io.metrics import PrometheusMetrics\n"
            "PrometheusMetrics().incr('records_in', 3, stage='user')\n"
        )
        for _ in range(2):  # two record processors (one per shard) write to the shared directory
            subprocess.run(
                [sys.executable, "-c", script],
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": str(REPO)},
                check=True,
                timeout=60,
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    assert 'qldbstream_records_in_total{stage="user"} 6.0' in text
    assert not Path(directory).exists()  # a directory of its own, removed afterwards


def test_records_waiting_in_memory_for_a_block_summary_are_dead_lettered_at_shard_end() -> None:
    """gate_store = memory under the KCL: what waits for a block summary this process will never
    read is decided at shard end (dead-lettered as unverifiable), then SHARD_END is checkpointed."""
    records, _ = stream(20, aggregate=False)
    kinds = [decode_bytes(base64.b64decode(r["data"]), RecordPosition("t")) for r in records]
    blocks = [i for i, k in enumerate(kinds) if isinstance(k, BlockSummary)]
    victim = blocks[len(blocks) // 2]
    orphans = {
        (k.document_id, k.version)
        for k in kinds
        if isinstance(k, RevisionDetails) and k.block_address.sequence_no == kinds[victim].sequence_no  # type: ignore[union-attr]
    }
    assert orphans
    sink, t, dlq = Sink(), FakeTime(), MemoryDLQ()
    processor, daemon = make(sink, t, dlq=dlq, gate=InMemoryGateStore())
    daemon.process(records[:victim] + records[victim + 1 :])
    assert processor.pipeline.waiting(SHARD)
    asked = daemon.call({"action": "shardEnded"})
    assert asked[-1] == (None, None)
    dead = {(letter.document_id, letter.version) for letter in dlq.letters}
    assert orphans <= dead
    assert all("unverifiable" in letter.error_message for letter in dlq.letters if letter.document_id)
    assert not {k for k in sink.effects if k.startswith("rev#")} & {f"rev#{d}#{v}" for d, v in orphans}
    daemon.close()
