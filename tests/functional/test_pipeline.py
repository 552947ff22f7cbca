"""The pipeline end to end on simulated streams: delivery, dedupe, poison, retries, the breaker,
the DLQ and the one checkpoint rule. Time is a fake clock; nothing really sleeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.api.router import Router
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import JournalRecord, RevisionDetails, decode
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import RetryableError
from qldbstream.io.dlq import DirectoryDeadLetterQueue
from qldbstream.pipeline.batch import Pipeline, PipelineSettings, VerificationAction
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import batches, kinesis_records, simulation

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")


def counting_router(name: str = "count") -> tuple[Router, Counter[tuple[str, int]]]:
    seen: Counter[tuple[str, int]] = Counter()
    router = Router(name)

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        seen[(revision.document_id, revision.version)] += 1

    return router, seen


def make_pipeline(
    handlers: Sequence[Handler], t: FakeTime, dlq: MemoryDLQ | None = None, **settings
) -> Pipeline:  # type: ignore[no-untyped-def]
    return Pipeline(
        handlers,
        dlq=dlq or MemoryDLQ(),
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(
            retry=RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=60), **settings
        ),
        clock=t.clock,
        sleep=t.sleep,
    )


def test_every_revision_exactly_once_despite_duplicates_and_batches() -> None:
    # Two shards: one document's revisions arrive on both, so older versions come late;
    # deliver-late hands them over (flagged) instead of dropping them.
    sim = simulation(80, shards=2, duplicates=0.2)
    router, seen = counting_router()
    t = FakeTime()
    pipeline = make_pipeline([router], t, late_policy=LatePolicy.DELIVER_LATE)
    for shard, records in kinesis_records(sim).items():
        last = None
        for batch in batches(records, 7):
            result = pipeline.process(shard, batch)
            assert not result.halted and result.first_unfinished is None
            assert result.checkpoint is not None
            last = result.checkpoint
        final = records[-1]
        assert last is not None and last[0] == final.sequence_number
    expected = {(r.document_id, r.version) for r in sim.ledger.revisions}
    assert set(seen) == expected
    assert set(seen.values()) == {1}


def test_by_default_a_late_revision_is_delivered_with_ctx_late() -> None:
    sim = simulation(80, shards=2, duplicates=0.2)
    router = Router("all")
    got: dict[tuple[str, int], list[bool]] = {}

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        got.setdefault((revision.document_id, revision.version), []).append(ctx.late)

    pipeline = make_pipeline([router], FakeTime())
    highest: dict[str, int] = {}
    late_expected = set()
    for shard, records in kinesis_records(sim).items():  # one shard after the other: versions interleave
        for batch in batches(records, 7):
            pipeline.process(shard, batch)
    assert set(got) == {(r.document_id, r.version) for r in sim.ledger.revisions}
    assert all(len(flags) == 1 for flags in got.values())
    # ctx.late is set exactly when a higher version of the document was delivered before
    order = list(got)  # insertion order = delivery order
    for doc, version in order:
        if version < highest.get(doc, -1):
            late_expected.add((doc, version))
        highest[doc] = max(highest.get(doc, -1), version)
    assert late_expected, "the two shards must interleave versions for this test to mean anything"
    assert {k for k, flags in got.items() if flags[0]} == late_expected


def test_drop_policy_gives_each_document_increasing_versions_ending_at_the_latest() -> None:
    sim = simulation(80, shards=2, duplicates=0.2)
    router = Router("latest")
    router.late_policy = "drop"  # a state mirror declares that it wants only newer versions
    got: dict[str, list[int]] = {}

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        got.setdefault(revision.document_id, []).append(revision.version)

    pipeline = make_pipeline([router], FakeTime())
    shards = kinesis_records(sim)
    for shard, records in shards.items():
        for batch in batches(records, 7):
            pipeline.process(shard, batch)
    assert all(v == sorted(set(v)) for v in got.values())
    latest = {doc: state.version for doc, state in sim.ledger.documents.items()}
    assert {doc: v[-1] for doc, v in got.items()} == latest


def test_tampered_revision_is_dead_lettered_and_never_delivered() -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    (failure,) = [f for f in sim.expected.failures if f.check == "V2"]
    router, seen = counting_router()
    dlq = MemoryDLQ()
    t = FakeTime()
    pipeline = make_pipeline([router], t, dlq)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("shardId-000000000000", records)
    assert result.first_unfinished is None and result.checkpoint is not None
    assert (failure.document_id, failure.version) not in seen
    (letter,) = dlq.letters
    assert letter.stage == "verify" and letter.document_id == failure.document_id
    assert letter.verification_failures[0]["check"] == "V2"
    assert letter.user_record_data and letter.kinesis_data and letter.sequence_number
    assert letter.sub_sequence_number is not None and letter.shard_id == "shardId-000000000000"


def test_dlq_outage_holds_the_checkpoint_before_the_poison_record() -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    router, seen = counting_router()
    t = FakeTime()
    pipeline = make_pipeline([router], t, MemoryDLQ(fail=True))
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("shardId-000000000000", records)
    assert result.halted and result.first_unfinished is not None
    poison_seq = result.first_unfinished.sequence_number
    assert (
        result.checkpoint is None or int(result.checkpoint[0]) < int(poison_seq) or result.checkpoint[1] >= 0
    )
    # nothing at or after the poison record was delivered
    assert all(
        int(r.sequence_number) < int(poison_seq) for r in records[: records.index(result.first_unfinished)]
    )
    delivered_after = [k for k in seen if k not in {(r.document_id, r.version) for r in sim.ledger.revisions}]
    assert delivered_after == []


class Flaky(Handler):
    """Fails ``failures`` times on the first record of every batch, then succeeds."""

    name = "flaky"

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.done: list[tuple[str, int]] = []

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        for r in records:
            assert isinstance(r, RevisionDetails)
            self.done.append((r.document_id, r.version))


def test_transient_errors_are_retried_with_backoff() -> None:
    sim = simulation(20)
    handler = Flaky(2, RetryableError("sink busy"))
    t = FakeTime()
    pipeline = make_pipeline([handler], t)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.first_unfinished is None and result.retries == 2
    assert len(t.slept) == 2 and 0.05 <= t.slept[0] <= 0.1 and 0.1 <= t.slept[1] <= 0.2
    assert len(handler.done) == len(sim.ledger.revisions)


def test_sink_outage_halts_opens_the_breaker_and_recovers() -> None:
    sim = simulation(20)
    handler = Flaky(10**6, ConnectionError("sink down"))
    t = FakeTime()
    pipeline = make_pipeline([handler], t)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.halted and result.first_unfinished is not None
    assert pipeline.breakers["flaky"].state == "open"
    assert handler.calls == 5  # the breaker opened after 5 failures: no more retries burnt
    calls = handler.calls
    result = pipeline.process("s", records)  # redelivery while open: refused at once
    assert result.halted and "circuit breaker" in result.halt_reason and handler.calls == calls
    # the sink comes back; after the recovery time the half-open trial succeeds
    handler.failures = 0
    t.now += 61
    result = pipeline.process("s", records)
    assert not result.halted and result.first_unfinished is None
    assert result.checkpoint is not None and result.checkpoint[0] == records[-1].sequence_number
    assert len(handler.done) == len(sim.ledger.revisions)


def test_a_record_the_handler_cannot_take_is_dead_lettered_after_retries() -> None:
    sim = simulation(30)
    bad = next(r for r in sim.ledger.revisions if r.table == "Transactions")
    router, seen = counting_router("picky")

    @router.revision(table="Transactions")
    def reject(revision: RevisionDetails, ctx: HandlerContext) -> None:
        if revision.document_id == bad.document_id:
            raise ValueError("cannot take this one")

    dlq = MemoryDLQ()
    t = FakeTime()
    pipeline = make_pipeline([router], t, dlq)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.first_unfinished is None
    (letter,) = dlq.letters
    assert letter.stage == "handler" and letter.handler == "picky" and letter.attempts == 5
    assert letter.error_type == "ValueError" and "cannot take this one" in (letter.traceback or "")
    assert len(seen) == len(sim.ledger.revisions)


def test_continue_mode_keeps_going_but_the_checkpoint_stays() -> None:
    sim = simulation(20)
    first = sim.ledger.revisions[3]
    router = Router("r")
    seen: list[tuple[str, int]] = []

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        if (revision.document_id, revision.version) == (first.document_id, first.version):
            raise ConnectionError("down for this one")
        seen.append((revision.document_id, revision.version))

    t = FakeTime()
    pipeline = make_pipeline([router], t, stop_on_first_failure=False, breaker_failures=100)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.first_unfinished is not None
    assert len(seen) == len(sim.ledger.revisions) - 1  # everything else was processed
    assert int(result.checkpoint[0]) < int(records[-1].sequence_number)  # type: ignore[index]
    # the runtime must read it again (a halt), not go on past it with the next batch
    assert result.halted


def test_continue_mode_with_reorder_never_checkpoints_past_a_failed_record() -> None:
    """The bug of issue 11: continue mode + reorder moved the checkpoint past a failed record."""
    sim = simulation(30, shards=1, aggregate=False)
    victim = sim.ledger.revisions[5]
    router = Router("r")
    attempts: dict[tuple[str, int], int] = {}
    failing = True

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        key = (revision.document_id, revision.version)
        attempts[key] = attempts.get(key, 0) + 1
        if failing and key == (victim.document_id, victim.version):
            raise ConnectionError("down for this one")

    t = FakeTime()
    pipeline = make_pipeline(
        [router], t, stop_on_first_failure=False, breaker_failures=100, late_policy=LatePolicy.REORDER
    )
    (records,) = kinesis_records(sim).values()
    victim_at = next(
        (int(r.sequence_number), 0)
        for r in records
        if isinstance(d := decode(deaggregate(r)[0]), RevisionDetails)
        and (d.document_id, d.version) == (victim.document_id, victim.version)
    )
    # a runtime's loop: read from the checkpoint while a batch halts
    checkpoint: tuple[str, int] | None = None
    position = 0
    for _ in range(50):
        batch = records[position : position + 6]
        if not batch:
            break
        result = pipeline.process("s", batch)
        if result.checkpoint is not None:
            checkpoint = result.checkpoint
        if checkpoint is not None and failing:
            assert (int(checkpoint[0]), checkpoint[1]) < victim_at, (
                "the checkpoint passed a record that failed"
            )
        if result.halted:
            failing = attempts.get((victim.document_id, victim.version), 0) < 3
            if checkpoint is None:
                position = 0
            else:
                position = next(i for i, r in enumerate(records) if r.sequence_number == checkpoint[0]) + 1
            continue
        position += len(batch)
    assert attempts[(victim.document_id, victim.version)] >= 3


@pytest.mark.parametrize(
    ("policy", "expect_late_delivered"), [(LatePolicy.DROP, 0), (LatePolicy.DELIVER_LATE, 1)]
)
def test_late_revisions(policy: LatePolicy, expect_late_delivered: int) -> None:
    sim = simulation(40)
    (records,) = kinesis_records(sim).values()
    router = Router("late")
    got: list[tuple[str, int, bool]] = []

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        got.append((revision.document_id, revision.version, ctx.late))

    t = FakeTime()
    pipeline = make_pipeline([router], t, late_policy=policy)
    # deliver the second half first, then the first half: every updated document sees older versions late
    half = len(records) // 2
    pipeline.process("s", records[half:])
    before = len(got)
    result = pipeline.process("s", records[:half])
    late = [g for g in got[before:] if g[2]]
    assert result.late > 0 if policy is LatePolicy.DROP else len(late) > 0
    assert (len(late) > 0) == bool(expect_late_delivered)


def test_reorder_delivers_each_document_in_version_order() -> None:
    sim = simulation(60, reorder=6, aggregate=False)
    (records,) = kinesis_records(sim).values()
    router = Router("ordered")
    versions: dict[str, list[int]] = {}

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        versions.setdefault(revision.document_id, []).append(revision.version)

    t = FakeTime()
    pipeline = make_pipeline([router], t, late_policy=LatePolicy.REORDER, reorder_window=5.0)
    for batch in batches(records, 10):
        pipeline.process("s", batch)
        t.now += 1
    t.now += 10
    pipeline.process("s", [])  # the window passes: anything still held is delivered
    assert all(v == sorted(v) for v in versions.values())
    assert sum(len(v) for v in versions.values()) == len(sim.ledger.revisions)


def test_verification_halt_action_stops_the_shard() -> None:
    sim = simulation(20, tampers=("Transactions#1:data.amount",))
    router, _ = counting_router()
    t = FakeTime()
    pipeline = make_pipeline([router], t, verification_action=VerificationAction.HALT)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.halted and "verification failed" in result.halt_reason


def test_directory_dlq_round_trip(tmp_path: Path) -> None:
    sim = simulation(20, tampers=("Transactions#1:data.amount",))
    dlq = DirectoryDeadLetterQueue(tmp_path / "dlq")
    router, _ = counting_router()
    pipeline = Pipeline([router], dlq=dlq)
    (records,) = kinesis_records(sim).values()
    pipeline.process("s", records)
    ((handle, letter),) = list(dlq.receive())
    assert letter.stage == "verify"
    replay = letter.kinesis_record()
    assert replay.data.startswith(b"\xe0\x01\x00\xea")  # the user record itself
    dlq.delete(handle)
    assert len(dlq) == 0


def test_revisions_of_a_block_that_fails_its_own_checks_are_not_delivered() -> None:
    # The forger recomputes the revision hash and patches the block's summary entry: the revision
    # passes V2 and V3, only the block fails (V4). The block no longer vouches for its revisions.
    sim = simulation(40, tampers=("Transactions#3+rehash:data.amount",))
    (v4,) = [f for f in sim.expected.failures if f.check == "V4"]
    router, seen = counting_router()
    dlq = MemoryDLQ()
    pipeline = make_pipeline([router], FakeTime(), dlq)
    (records,) = kinesis_records(sim).values()
    result = pipeline.process("s", records)
    assert result.first_unfinished is None
    forged = [r for r in sim.ledger.revisions if r.sequence_no == v4.sequence_no]
    assert forged and not any((r.document_id, r.version) in seen for r in forged)
    stages = sorted((letter.stage, letter.block_sequence_no) for letter in dlq.letters)
    assert stages == [("verify", v4.sequence_no)] * (len(forged) + 1)  # the block and each revision
    assert any("does not vouch" in letter.error_message for letter in dlq.letters)


def test_a_poison_record_after_a_stuck_one_is_dead_lettered_once_across_redeliveries() -> None:
    sim = simulation(40, tampers=("Transactions#6:data.amount",))
    first = sim.ledger.revisions[2]
    router = Router("stuck")

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        if (revision.document_id, revision.version) == (first.document_id, first.version):
            raise ConnectionError("sink down")

    dlq = MemoryDLQ()
    t = FakeTime()
    pipeline = make_pipeline([router], t, dlq, breaker_failures=1000)
    (records,) = kinesis_records(sim).values()
    for _ in range(3):  # the halted batch is delivered again and again, as a runtime would
        result = pipeline.process("s", records)
        assert result.halted and result.first_unfinished is not None
        t.now += 120
    assert len(dlq.letters) == 1 and dlq.letters[0].stage == "verify"
