"""The Lambda runtime end to end on simulated Lambda events: the partial batch response, poison
records, the DLQ, continue mode, the deadline, tumbling windows and configuration by environment.

Lambda itself is played by :func:`drive`: when a response names a record, the batch is sent
again from that record on. Time is a fake clock; nothing really sleeps.
"""

from __future__ import annotations

import base64
import copy
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import BlockSummary, RevisionDetails, decode
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError, HaltShardError, RetryableError
from qldbstream.io.dlq import DirectoryDeadLetterQueue
from qldbstream.io.lambda_event import kinesis_record
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore
from qldbstream.runtimes import aws_lambda
from qldbstream.runtimes.aws_lambda import BatchFailedError, LambdaHandler, TumblingWindow, make_handler
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import simulation

Event = dict[str, Any]
Key = tuple[str, int]
Decide = Callable[[RevisionDetails], BaseException | None]


class FakeContext:
    """The part of Lambda's context object the adapter uses: the time left, on the fake clock."""

    def __init__(self, t: FakeTime, seconds: float = 300.0) -> None:
        self.t = t
        self.end = t.now + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.end - self.t.now) * 1000))


class Recorder(Router):
    """Counts every revision and block summary it is given; ``fail`` decides which to refuse."""

    def __init__(self, name: str = "recorder") -> None:
        super().__init__(name)
        self.revisions: Counter[Key] = Counter()
        self.blocks: Counter[int] = Counter()
        self.fail: Decide = lambda r: None
        self.add_revision_handler(self.on_revision)
        self.add_block_summary_handler(self.on_block)

    def on_revision(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        error = self.fail(revision)
        if error is not None:
            raise error
        self.revisions[(revision.document_id, revision.version)] += 1

    def on_block(self, block: BlockSummary, ctx: HandlerContext) -> None:
        self.blocks[block.block_address.sequence_no] += 1


def fail_once(target: Key, error: BaseException | None = None) -> Decide:
    failed: list[Key] = []

    def decide(revision: RevisionDetails) -> BaseException | None:
        if (revision.document_id, revision.version) == target and not failed:
            failed.append(target)
            return error or HaltShardError("the sink refused it")
        return None

    return decide


class DurableGate(InMemoryGateStore):
    """A gate store that survives the invocation, as DynamoDB does (shared by every container)."""

    @property
    def durable(self) -> bool:
        return True


def lambda_handler(
    handlers: Sequence[Router], t: FakeTime, dlq: Any = None, gate: Any = None, **settings: Any
) -> LambdaHandler:
    app = App(
        Settings(**settings),
        handlers=handlers,
        dlq=dlq or MemoryDLQ(),
        store=InMemoryDedupeStore(),
        gate_store=gate,
    )
    return make_handler(app, clock=t.clock, sleep=t.sleep)


def events(sim: Simulation, batch_size: int = 10) -> list[Event]:
    return list(sim.lambda_events(batch_size=batch_size))


def failures(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def from_sequence(event: Event, sequence: str) -> Event:
    """The batch Lambda sends after a partial failure: the records from ``sequence`` on."""
    records = event["Records"]
    start = next(i for i, r in enumerate(records) if r["kinesis"]["sequenceNumber"] == sequence)
    return {**event, "Records": records[start:]}


Function = Callable[[Event, Any], dict[str, Any]]


def drive(handler: Function, batches: Iterable[Event], context: Any) -> list[str]:
    """Play Lambda: send each batch, resend from the reported record until it succeeds."""
    reported: list[str] = []
    for event in batches:
        for _ in range(10):
            response = handler(event, context)
            assert all(failures(response)), "never an empty identifier"
            if not failures(response):
                break
            (sequence,) = failures(response)
            reported.append(sequence)
            event = from_sequence(event, sequence)
        else:
            pytest.fail("the batch never finished")
    return reported


def locate(batches: Iterable[Event]) -> dict[Key, tuple[str, int]]:
    """Where each revision first arrives: (Kinesis sequence number, sub-sequence number)."""
    where: dict[Key, tuple[str, int]] = {}
    for event in batches:
        for entry in event["Records"]:
            for user in deaggregate(kinesis_record(entry, "locate")):
                record = decode(user)
                if isinstance(record, RevisionDetails):
                    key = (record.document_id, record.version)
                    where.setdefault(key, (user.sequence_number, user.sub_sequence_number))
    return where


def tampered(sim: Simulation) -> Key:
    """The one revision the simulation's tamper breaks (V2: its hash no longer matches)."""
    (failure,) = [f for f in sim.expected.failures if f.check == "V2"]
    assert failure.document_id is not None and failure.version is not None
    return failure.document_id, failure.version


def all_revisions(sim: Simulation) -> set[Key]:
    return {(r.document_id, r.version) for r in sim.ledger.revisions}


# --- the partial batch response ---------------------------------------------------------------


@pytest.mark.parametrize("aggregate", [True, False])
def test_a_batch_that_finishes_reports_no_failures_and_delivers_each_revision_once(aggregate: bool) -> None:
    sim = simulation(50, aggregate=aggregate, duplicates=0.2)
    t = FakeTime()
    recorder = Recorder()
    handler = lambda_handler([recorder], t)
    for event in events(sim, 9):
        assert handler(event, FakeContext(t)) == {"batchItemFailures": []}
    assert set(recorder.revisions) == all_revisions(sim)
    assert set(recorder.revisions.values()) == {1}
    assert set(recorder.blocks.values()) == {1} and len(recorder.blocks) == len(sim.journal.blocks)


def test_a_failure_in_an_aggregates_2nd_user_record_names_the_aggregate_then_exactly_once() -> None:
    sim = simulation(60, aggregate=True, duplicates=0.2)
    batches = events(sim, 10)
    where = locate(batches)
    # the first revision of a later block is the aggregate's 2nd user record (after the BLOCK_SUMMARY)
    target = next(k for k, (_, sub) in list(where.items())[20:] if sub == 1)
    aggregate_sequence = where[target][0]
    recorder = Recorder()
    recorder.fail = fail_once(target)
    t = FakeTime()
    handler = lambda_handler([recorder], t)

    reported = drive(handler, batches, FakeContext(t))

    assert reported == [aggregate_sequence]
    assert set(recorder.revisions) == all_revisions(sim)
    assert set(recorder.revisions.values()) == {1}  # each side effect exactly once overall
    assert set(recorder.blocks.values()) == {1}  # the finished sibling was not repeated


def test_a_tampered_revision_is_dead_lettered_and_the_batch_succeeds(tmp_path: Path) -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    bad = tampered(sim)
    recorder = Recorder()
    t = FakeTime()
    app = App(Settings(dlq=f"dir:{tmp_path / 'dlq'}"), handlers=[recorder])
    handler = make_handler(app, clock=t.clock, sleep=t.sleep)
    for event in events(sim):
        assert failures(handler(event, FakeContext(t))) == []
    ((_, letter),) = list(DirectoryDeadLetterQueue(tmp_path / "dlq").receive())
    assert letter.stage == "verify" and (letter.document_id, letter.version) == bad
    assert bad not in recorder.revisions
    assert set(recorder.revisions) == all_revisions(sim) - {bad}


def test_a_dlq_outage_fails_at_the_poison_record_and_nothing_after_it_is_delivered() -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    batches = events(sim, 100)
    where = locate(batches)
    poison_sequence, poison_sub = where[tampered(sim)]
    recorder = Recorder()
    dlq = MemoryDLQ(fail=True)
    t = FakeTime()
    handler = lambda_handler([recorder], t, dlq)
    (event,) = batches

    assert failures(handler(event, FakeContext(t))) == [poison_sequence]
    # nothing at or after the poison user record; its siblings before it in the aggregate are done
    poison_at = (int(poison_sequence), poison_sub)
    assert recorder.revisions and all((int(where[k][0]), where[k][1]) < poison_at for k in recorder.revisions)
    # the DLQ comes back: Lambda resends from the poison record and everything finishes
    dlq.fail = False
    assert failures(handler(from_sequence(event, poison_sequence), FakeContext(t))) == []
    (letter,) = dlq.letters
    assert letter.sequence_number == poison_sequence
    assert set(recorder.revisions.values()) == {1}


# --- records the event cannot deliver readable -----------------------------------------------


def corrupt(event: Event, index: int, **changes: Any) -> Event:
    broken = copy.deepcopy(event)
    broken["Records"][index]["kinesis"].update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del broken["Records"][index]["kinesis"][key]
    return broken


def wanted_by_recorder(entry: dict[str, Any]) -> bool:
    users = deaggregate(kinesis_record(entry, "test"))
    return any(isinstance(decode(u), RevisionDetails | BlockSummary) for u in users)


def revisions_in(entry: dict[str, Any]) -> set[Key]:
    out = set()
    for user in deaggregate(kinesis_record(entry, "test")):
        record = decode(user)
        if isinstance(record, RevisionDetails):
            out.add((record.document_id, record.version))
    return out


def test_a_malformed_record_is_dead_lettered_with_its_position_and_the_batch_succeeds() -> None:
    sim = simulation(30)
    (event,) = events(sim, 100)
    victim = event["Records"][5]
    lost = revisions_in(victim)
    broken = corrupt(event, 5, data="not*base64!")
    recorder = Recorder()
    dlq = MemoryDLQ()
    t = FakeTime()

    assert lambda_handler([recorder], t, dlq)(broken, FakeContext(t)) == {"batchItemFailures": []}

    (letter,) = dlq.letters
    assert letter.stage == "event" and letter.error_type == "MalformedKinesisRecordError"
    assert letter.sequence_number == victim["kinesis"]["sequenceNumber"]
    assert letter.shard_id == "shardId-000000000000" and letter.source == "lambda event Records[5]"
    assert letter.stream_arn == victim["eventSourceARN"]
    assert base64.b64decode(letter.kinesis_data or "") == b"not*base64!"  # the text as received
    assert set(recorder.revisions) == all_revisions(sim) - lost  # the records after it were processed


def test_a_malformed_record_with_the_dlq_down_is_the_reported_failure() -> None:
    sim = simulation(30)
    (event,) = events(sim, 100)
    before = set().union(*(revisions_in(e) for e in event["Records"][:5]))
    broken = corrupt(event, 5, data="not*base64!")
    recorder = Recorder()
    t = FakeTime()
    response = lambda_handler([recorder], t, MemoryDLQ(fail=True))(broken, FakeContext(t))
    assert failures(response) == [event["Records"][5]["kinesis"]["sequenceNumber"]]
    assert set(recorder.revisions) == before  # stopped there: nothing after it was delivered


def test_an_unfinished_record_without_a_sequence_number_fails_the_whole_invocation() -> None:
    sim = simulation(20)
    (event,) = events(sim, 100)
    broken = corrupt(event, 3, sequenceNumber=None)
    t = FakeTime()
    with pytest.raises(BatchFailedError, match="no sequence number"):
        lambda_handler([Recorder()], t, MemoryDLQ(fail=True))(broken, FakeContext(t))
    # when it can be set aside it is just poison: dead-lettered with the position it has
    dlq = MemoryDLQ()
    assert failures(lambda_handler([Recorder()], t, dlq)(broken, FakeContext(t))) == []
    (letter,) = dlq.letters
    assert letter.sequence_number is None and letter.source == "lambda event Records[3]"


# --- continue mode, the deadline ---------------------------------------------------------------


def test_continue_mode_processes_the_rest_but_reports_the_first_unfinished_record() -> None:
    sim = simulation(40, aggregate=False)
    (event,) = events(sim, 200)
    where = locate([event])
    latest = {doc: s.version for doc, s in sim.ledger.documents.items()}
    # a document's last version: no later revision can overtake it (it would make it late)
    target = next(k for k in list(where)[10:] if latest[k[0]] == k[1])
    recorder = Recorder()
    recorder.fail = lambda r: HaltShardError("down") if (r.document_id, r.version) == target else None
    t = FakeTime()
    handler = lambda_handler([recorder], t, stop_on_first_failure=False)

    assert failures(handler(event, FakeContext(t))) == [where[target][0]]
    assert set(recorder.revisions) == all_revisions(sim) - {target}  # the rest was processed

    recorder.fail = lambda r: None
    assert failures(handler(from_sequence(event, where[target][0]), FakeContext(t))) == []
    assert set(recorder.revisions) == all_revisions(sim) and set(recorder.revisions.values()) == {1}


def test_continue_mode_goes_past_a_malformed_record_it_cannot_dead_letter() -> None:
    sim = simulation(30, aggregate=False)
    (event,) = events(sim, 1000)
    broken = corrupt(event, 4, data="%%%")
    recorder = Recorder()
    t = FakeTime()
    handler = lambda_handler([recorder], t, MemoryDLQ(fail=True), stop_on_first_failure=False)
    assert failures(handler(broken, FakeContext(t))) == [event["Records"][4]["kinesis"]["sequenceNumber"]]
    # the unreadable record's revisions, and those of its block summary (if it is one), stay undelivered
    lost = revisions_in(event["Records"][4])
    original = decode(deaggregate(kinesis_record(event["Records"][4], "test"))[0])
    if isinstance(original, BlockSummary):
        lost |= {
            (r.document_id, r.version) for r in sim.ledger.revisions if r.sequence_no == original.sequence_no
        }
    assert set(recorder.revisions) == all_revisions(sim) - lost


class Slow(Router):
    """Takes ``seconds`` of (fake) time for every batch of block summaries."""

    def __init__(self, t: FakeTime, seconds: float) -> None:
        super().__init__("slow")
        self.t, self.seconds = t, seconds
        self.blocks: Counter[int] = Counter()
        self.add_block_summary_handler(self.on_block)

    def handle_batch(self, records: Sequence[Any], ctx: HandlerContext) -> None:
        super().handle_batch(records, ctx)
        self.t.now += self.seconds

    def on_block(self, block: BlockSummary, ctx: HandlerContext) -> None:
        self.blocks[block.block_address.sequence_no] += 1


def test_near_the_deadline_the_invocation_stops_and_reports_the_first_unprocessed_record() -> None:
    sim = simulation(30)
    (event,) = events(sim, 100)
    t = FakeTime()
    slow = Slow(t, seconds=5.0)
    recorder = Recorder()
    handler = lambda_handler([slow, recorder], t)  # the recorder's turn comes after the slow handler's

    response = handler(event, FakeContext(t, seconds=4.0))

    first_wanted = next(e for e in event["Records"] if wanted_by_recorder(e))
    assert failures(response) == [first_wanted["kinesis"]["sequenceNumber"]]
    assert not recorder.revisions  # out of time before its turn
    # Lambda resends from there with a full timeout: everything finishes, nothing twice
    assert failures(handler(from_sequence(event, failures(response)[0]), FakeContext(t))) == []
    assert set(recorder.revisions) == all_revisions(sim) and set(recorder.revisions.values()) == {1}
    assert set(slow.blocks.values()) == {1}


# --- tumbling windows ---------------------------------------------------------------------------


class WindowCounter(Router):
    """Counts transactions (block summaries) per window in the window state; keeps closed windows."""

    def __init__(self) -> None:
        super().__init__("per-window")
        self.closed: list[tuple[TumblingWindow, dict[str, Any]]] = []
        self.hook_errors: list[BaseException] = []
        self.fail_block: int | None = None
        self.add_block_summary_handler(self.on_block)

    def on_block(self, block: BlockSummary, ctx: HandlerContext) -> None:
        if block.block_address.sequence_no == self.fail_block:
            self.fail_block = None
            raise HaltShardError("not now")
        assert ctx.window_state is not None
        ctx.window_state["transactions"] = ctx.window_state.get("transactions", 0) + 1

    def window_closed(self, window: TumblingWindow, ctx: HandlerContext) -> None:
        if self.hook_errors:
            raise self.hook_errors.pop(0)
        self.closed.append((window, dict(window.state)))


def windowed(event: Event, state: dict[str, Any], *, final: bool = False, early: bool = False) -> Event:
    return {
        **event,
        "window": {"start": "2024-05-01T10:00:00Z", "end": "2024-05-01T10:05:00Z"},
        "state": state,
        "shardId": "shardId-000000000000",
        "eventSourceARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/simbank-journal",
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": early,
    }


def test_window_state_goes_in_and_out_across_invocations_and_the_final_invoke_closes_it() -> None:
    sim = simulation(40)
    counter = WindowCounter()
    counter.fail_block = 17
    t = FakeTime()
    handler = lambda_handler([counter], t)
    state: dict[str, Any] = {}
    partial = []
    for event in events(sim, 8):
        current = windowed(event, state)
        while True:
            response = handler(current, FakeContext(t))
            assert "state" in response  # always, even with a failure
            state = response["state"]
            if not failures(response):
                break
            partial.append(response)
            current = windowed(from_sequence(event, failures(response)[0]), state)
        assert not counter.closed
    assert len(partial) == 1  # block 17 failed once and was resent from its record
    assert state == {"transactions": len(sim.journal.blocks)}  # each transaction counted once

    final = handler(windowed({"Records": []}, state, final=True), FakeContext(t))

    assert final == {"batchItemFailures": [], "state": state}
    ((window, closed_state),) = counter.closed
    assert closed_state == {"transactions": len(sim.journal.blocks)}
    assert window.final and window.start == "2024-05-01T10:00:00Z"
    assert window.shard_id == "shardId-000000000000" and window.end == "2024-05-01T10:05:00Z"


def test_an_early_terminated_window_is_closed_too() -> None:
    counter = WindowCounter()
    t = FakeTime()
    response = lambda_handler([counter], t)(windowed({"Records": []}, {"transactions": 3}, early=True), None)
    assert response["state"] == {"transactions": 3}
    ((window, _),) = counter.closed
    assert window.terminated_early and not window.final


def test_the_window_is_not_closed_while_a_record_of_the_final_invoke_is_unfinished() -> None:
    sim = simulation(10)
    (event,) = events(sim, 100)
    counter = WindowCounter()
    counter.fail_block = 3
    t = FakeTime()
    handler = lambda_handler([counter], t)
    response = handler(windowed(event, {}, final=True), FakeContext(t))
    assert failures(response) and response["state"] == {"transactions": 2}
    assert not counter.closed
    resent = from_sequence(event, failures(response)[0])
    again = handler(windowed(resent, response["state"], final=True), None)
    assert failures(again) == []
    ((_, closed_state),) = counter.closed
    assert closed_state == {"transactions": len(sim.journal.blocks)}


def test_a_failing_window_hook_is_retried_then_fails_the_invocation() -> None:
    counter = WindowCounter()
    t = FakeTime()
    handler = lambda_handler([counter], t)
    counter.hook_errors = [RetryableError("store busy"), RetryableError("store busy")]
    response = handler(windowed({"Records": []}, {"transactions": 5}, final=True), FakeContext(t))
    assert response["state"] == {"transactions": 5} and len(counter.closed) == 1
    assert len(t.slept) == 2  # retried with backoff on the fake clock

    counter.hook_errors = [ConnectionError("down")] * 10
    with pytest.raises(BatchFailedError, match="window_closed of per-window failed"):
        handler(windowed({"Records": []}, {"transactions": 5}, final=True), FakeContext(t))
    assert len(counter.closed) == 1


# --- configuration and the two forms ---------------------------------------------------------------

ENV_RECORDER = Recorder("env-recorder")


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    import os

    for key in [k for k in os.environ if k.startswith("QLDBSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", f"{__name__}:ENV_RECORDER")
    monkeypatch.setenv("QLDBSTREAM_DLQ", f"dir:{tmp_path / 'dlq'}")
    ENV_RECORDER.revisions.clear()
    ENV_RECORDER.blocks.clear()
    aws_lambda.configured_handler.cache_clear()
    yield tmp_path / "dlq"
    aws_lambda.configured_handler.cache_clear()


def test_the_handler_string_is_configured_by_the_environment_alone(lambda_env: Path) -> None:
    sim = simulation(30, duplicates=0.2, tampers=("Transactions#1:data.amount",))
    for event in events(sim):
        assert aws_lambda.handler(event, None) == {"batchItemFailures": []}
    built = aws_lambda.configured_handler()
    assert built.app.handlers == [ENV_RECORDER]  # built once, reused by every invocation
    assert set(ENV_RECORDER.revisions.values()) == {1}
    letters = [letter for _, letter in DirectoryDeadLetterQueue(lambda_env).receive(100)]
    assert letters  # the tampered revision (and its duplicate delivery, if any)
    assert {(x.stage, (x.document_id, x.version)) for x in letters} == {("verify", tampered(sim))}


def test_a_bad_setting_fails_the_first_invocation_with_one_clear_message(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (event,) = events(simulation(5), 100)
    monkeypatch.setenv("QLDBSTREAM_STOP_ON_FIRST_FAILURE", "perhaps")
    with pytest.raises(ConfigurationError) as caught:
        aws_lambda.handler(event, None)
    message = str(caught.value)
    assert "QLDBSTREAM_STOP_ON_FIRST_FAILURE" in message and "expected true or false" in message
    assert "\n" not in message and caught.value.__cause__ is None
    monkeypatch.setenv("QLDBSTREAM_STOP_ON_FIRST_FAILURE", "false")  # fixed: the next one works
    assert aws_lambda.handler(event, None) == {"batchItemFailures": []}
    assert aws_lambda.configured_handler().pipeline.settings.stop_on_first_failure is False


def test_an_unknown_handler_plugin_is_a_configuration_error(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", f"{__name__}:NO_SUCH_ROUTER")
    with pytest.raises(ConfigurationError, match="has no NO_SUCH_ROUTER"):
        aws_lambda.handler({"Records": []}, None)


def test_the_factory_without_reported_batch_item_failures_raises_instead() -> None:
    sim = simulation(20)
    (event,) = events(sim, 100)
    target = next(iter(locate([event])))
    recorder = Recorder()
    recorder.fail = fail_once(target)
    t = FakeTime()
    app = App(Settings(), handlers=[recorder], dlq=MemoryDLQ())
    handler = make_handler(app, report_batch_item_failures=False, clock=t.clock, sleep=t.sleep)
    with pytest.raises(BatchFailedError, match="does not report batch item failures"):
        handler(event, FakeContext(t))
    assert handler(event, FakeContext(t)) == {"batchItemFailures": []}  # Lambda retried the batch
    assert set(recorder.revisions.values()) == {1}


def test_an_event_from_another_source_is_refused() -> None:
    t = FakeTime()
    sqs_event = {"Records": [{"eventSource": "aws:sqs", "messageId": "1", "body": "{}"}]}
    with pytest.raises(ConfigurationError, match="not 'aws:sqs' events"):
        lambda_handler([Recorder()], t)(sqs_event, None)
    with pytest.raises(ConfigurationError, match="no 'Records' list"):
        lambda_handler([Recorder()], t)({"detail": {}}, None)


def test_several_shards_in_one_event_each_report_their_own_first_unfinished_record() -> None:
    sim = simulation(60, shards=2, aggregate=False)
    by_shard: dict[str, Event] = {}
    for event in events(sim, 1000):
        shard = event["Records"][0]["eventID"].split(":")[0]
        by_shard.setdefault(shard, {"Records": []})["Records"].extend(event["Records"])
    merged = {"Records": [r for e in by_shard.values() for r in e["Records"]]}
    first_shard = next(iter(by_shard))
    where = locate([by_shard[first_shard]])
    target = list(where)[len(where) // 2]
    recorder = Recorder()
    recorder.fail = fail_once(target)
    t = FakeTime()
    # a document's revisions are spread over both shards: deliver-late keeps the older ones; a
    # revision read before its block summary (on the other shard) waits in a durable gate store
    handler = lambda_handler([recorder], t, gate=DurableGate(), late_policy=LatePolicy.DELIVER_LATE)
    reported = failures(handler(merged, FakeContext(t)))
    # one record is unfinished: the target itself, or - when the target waited in the gate store for
    # its block summary - the block summary on the other shard that delivers it
    assert len(reported) == 1 and target not in recorder.revisions
    stuck = reported[0]
    shard = next(
        s for s, e in by_shard.items() if any(r["kinesis"]["sequenceNumber"] == stuck for r in e["Records"])
    )
    # Lambda delivers the reported shard again from the reported record: everything arrives
    assert failures(handler(from_sequence(by_shard[shard], stuck), FakeContext(t))) == []
    assert set(recorder.revisions) == all_revisions(sim)


class FlushingMetrics(InMemoryMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_metrics_are_recorded_and_flushed_after_every_invocation() -> None:
    sim = simulation(20)
    (event,) = events(sim, 100)
    metrics = FlushingMetrics()
    t = FakeTime()
    app = App(Settings(), handlers=[Recorder()], dlq=MemoryDLQ(fail=True), metrics=metrics)
    handler = make_handler(app, clock=t.clock, sleep=t.sleep)
    assert failures(handler(corrupt(event, 2, data="?"), FakeContext(t)))
    with pytest.raises(BatchFailedError):
        handler(corrupt(event, 0, sequenceNumber=None), FakeContext(t))
    assert metrics.flushes == 2  # also when the invocation fails
    assert metrics.total("batch_item_failures") == 1 and metrics.total("malformed_records") == 2
    assert metrics.total("dlq_write_failures") == 2


def test_a_malformed_record_is_sealed_like_every_dead_letter_when_masking_is_on() -> None:
    """The adapter dead-letters through the pipeline: the raw text (which may carry personal data)
    is sealed under masking, and the sealer gives it back byte for byte."""
    sim = simulation(30)
    (event,) = events(sim, 100)
    raw = "not*base64! ssn=123-45-6789"
    broken = corrupt(event, 5, data=raw)
    dlq = MemoryDLQ()
    t = FakeTime()
    key = base64.b64encode(bytes(range(32))).decode()
    handler = lambda_handler(
        [Recorder()], t, dlq, masking=True, masking_hash_key="k" * 32, masking_dlq_key=key
    )
    try:
        assert handler(broken, FakeContext(t)) == {"batchItemFailures": []}
        (letter,) = dlq.letters
        assert letter.stage == "event" and letter.sealed and letter.kinesis_data is None
        assert "123-45-6789" not in letter.to_json()
        assert handler.app.sealer is not None
        assert letter.kinesis_record(handler.app.sealer).data == raw.encode()
    finally:
        handler.app.close()  # masking installs a process-wide log filter: the app takes it away
