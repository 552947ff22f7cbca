"""A restart with the in-memory gate store: a block summary holds its shard's checkpoint until each
revision it lists is finished (delivered to every handler, or dead-lettered), not merely judged.

Without aggregation a block summary B and its revision R sit on different shards. If B's shard
checkpointed past B as soon as R was admitted, a handler failing on R (R's shard halts before R)
followed by a restart (the in-memory verdicts gone) would read R again but never B: R would wait for
a block summary that never comes and end in the DLQ as unverifiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from qldbstream.api.handler import BatchItemError, HandlerContext
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails, decode
from qldbstream.core.errors import RetryableError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline
from tests.functional.test_delivery_gate import Recorder, pipeline
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.forge import Delivery as Stream
from tests.support.forge import forge_stream

Checkpoint = tuple[str, int]


class FailsOn(Recorder):
    """Records what it is given; fails (transiently, so its shard halts) on one revision hash."""

    def __init__(self, poison: bytes | None) -> None:
        super().__init__()
        self.poison = poison

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for i, r in enumerate(records):
            if isinstance(r, RevisionDetails) and r.hash == self.poison:
                super().handle_batch(records[:i], ctx)
                raise BatchItemError(i, RetryableError("the sink is down"))
        super().handle_batch(records, ctx)


def _decoded(kr: KinesisRecord) -> JournalRecord:
    return decode(deaggregate(kr)[0])


def _split_pair(stream: Stream) -> tuple[str, str, RevisionDetails]:
    """(shard of a block summary, shard of one of its revisions, that revision): the first revision
    on the second shard whose block summary is on the first one."""
    a, b = (s.shard_id for s in stream.shards if s.records)
    blocks_on_a = {
        (r.block_address.strand_id, r.block_address.sequence_no)
        for r in map(_decoded, stream.kinesis_records(a))
        if isinstance(r, BlockSummary)
    }
    for r in map(_decoded, stream.kinesis_records(b)):
        if (
            isinstance(r, RevisionDetails)
            and (r.block_address.strand_id, r.block_address.sequence_no) in blocks_on_a
        ):
            return a, b, r
    raise AssertionError("no block summary and revision of it on different shards: the test is void")


def _after(records: list[KinesisRecord], checkpoint: Checkpoint | None) -> list[KinesisRecord]:
    """What a restarted runtime reads: the records after the checkpoint (all of them without one)."""
    if checkpoint is None:
        return records
    return [kr for kr in records if int(kr.sequence_number) > int(checkpoint[0])]


def _track(checkpoints: dict[str, Checkpoint | None], shard: str, result: BatchResult) -> None:
    """Record the checkpoints a runtime would write after ``result``."""
    if result.checkpoint is not None:
        checkpoints[shard] = result.checkpoint
    for other, cp in result.other_checkpoints.items():
        if other is not None:
            checkpoints[other] = cp


def _run(p: Pipeline, checkpoints: dict[str, Checkpoint | None], shards: list[str], stream: Stream) -> bool:
    """Read each shard from its checkpoint, one batch each, in the order given (journal order: then
    the watermark passes everything, as at the end of the worker's input); whether one halted."""
    halted = False
    for shard in shards:
        result = p.process(shard, _after(stream.kinesis_records(shard), checkpoints[shard]))
        _track(checkpoints, shard, result)
        halted |= result.halted
    if p.admission.order is not None:
        p.watermark = float("inf")
        for shard in shards:
            result = p.process(shard, [])
            _track(checkpoints, shard, result)
            halted |= result.halted
    return halted


@pytest.mark.parametrize("journal_order", [False, True], ids=["shard-order", "journal-order"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_revision_whose_handler_failed_is_delivered_after_a_restart_not_dead_lettered(
    seed: int, journal_order: bool
) -> None:
    stream = forge_stream(seed, transactions=12, shards=2, aggregated=False)
    shard_a, shard_b, revision = _split_pair(stream)
    t, dlq = FakeTime(), MemoryDLQ()
    checkpoints: dict[str, Checkpoint | None] = {shard_a: None, shard_b: None}
    # the first process: block summary B's shard first, then R's shard, whose handler fails on R
    first = FailsOn(revision.hash)
    p: Pipeline = pipeline(t, dlq, first, journal_order=journal_order)
    assert _run(p, checkpoints, [shard_a, shard_b], stream), "the handler did not fail on R: the test is void"
    assert revision.hash not in {h for _, _, h, _ in first.revisions}
    assert not dlq.letters
    # the process restarts: a fresh pipeline (the in-memory gate's verdicts are gone) reads each shard
    # from its checkpoint, with a handler that succeeds; R's shard first: R waits for its block summary
    second = FailsOn(None)
    p = pipeline(t, dlq, second, journal_order=journal_order)
    assert not _run(p, checkpoints, [shard_b, shard_a], stream)
    p.drain()
    assert not dlq.letters, [letter.error_message for letter in dlq.letters]
    assert revision.hash in {h for _, _, h, _ in second.revisions}, "R never reached the handler"
    delivered = set(first.keys()) | set(second.keys())
    assert delivered == {f.key for f in stream.journal.truth.deliverable()}
