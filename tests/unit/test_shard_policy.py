"""The one shard policy every runtime follows after a batch (qldbstream.pipeline.shard_policy)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult
from qldbstream.pipeline.shard_policy import ShardPolicy, breaker_wait, stuck_record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def records(n: int) -> list[KinesisRecord]:
    return [KinesisRecord(b"x", str(i + 1), shard_id="s") for i in range(n)]


def policy(clock: Clock, breaker: float = 0.0) -> ShardPolicy:
    return ShardPolicy("s", 1.0, 8.0, clock, lambda: breaker, random.Random(7))


def test_a_finished_batch_checkpoints_and_clears_the_halts() -> None:
    clock, batch = Clock(), records(3)
    p = policy(clock)
    p.after(batch, BatchResult("s", 3, halted=True, halt_reason="sink down", first_unfinished=batch[0]))
    step = p.after(batch, BatchResult("s", 3, finished=3, checkpoint=("3", 0)))
    assert step.checkpoint == ("3", 0) and not step.rewind and step.again_from is None
    assert not step.halted and step.delay == 0 and p.halts == 0 and p.halt_reason == ""


def test_a_halt_reads_again_from_the_first_unfinished_record_after_a_growing_backoff() -> None:
    clock, batch = Clock(), records(4)
    p = policy(clock)
    delays = []
    for _ in range(5):
        result = BatchResult("s", 4, finished=1, checkpoint=("1", 0), halted=True, halt_reason="sink down")
        result.first_unfinished = batch[1]
        step = p.after(batch, result)
        assert step.rewind and step.again_from == 1 and step.halted and step.reason == "sink down"
        assert step.checkpoint == ("1", 0)  # what finished before the halt is still checkpointed
        delays.append(step.delay)
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert p.halts == 5 and p.halted_since == 100.0


def test_an_open_breaker_sets_the_earliest_retry() -> None:
    clock, batch = Clock(), records(1)
    step = policy(clock, breaker=45.0).after(
        batch, BatchResult("s", 1, halted=True, first_unfinished=batch[0])
    )
    assert step.delay == 45.0


def test_progress_reads_the_rest_again_at_once_and_is_no_halt() -> None:
    clock, batch = Clock(), records(4)
    p = policy(clock)
    result = BatchResult("s", 4, finished=2, checkpoint=("2", 0))
    result.first_unfinished = batch[2]  # e.g. the invocation's deadline came (no halt)
    step = p.after(batch, result)
    assert step.rewind and step.again_from == 2 and not step.halted and step.delay == 0 and p.halts == 0
    result = BatchResult("s", 2, finished=0)
    result.first_unfinished = batch[2]
    assert p.after(batch[2:], result).halted  # nothing finished: that is a halt


def test_what_waits_inside_the_pipeline_is_not_read_again() -> None:
    clock, batch = Clock(), records(3)
    result = BatchResult("s", 3, finished=1, checkpoint=("1", 0), held=2)
    result.first_unfinished = batch[1]  # held back by the reorder policy: the pipeline releases it
    step = policy(clock).after(batch, result)
    assert not step.rewind and step.again_from is None and step.waiting_inside and not step.halted


def test_control_completed_ends_the_shard_unless_it_is_read_again() -> None:
    clock, batch = Clock(), records(2)
    done = BatchResult("s", 2, finished=2, checkpoint=("2", 0), completed=batch[1])
    assert policy(clock).after(batch, done).completed
    halted = BatchResult("s", 2, finished=1, halted=True, completed=batch[1], first_unfinished=batch[1])
    assert not policy(clock).after(batch, halted).completed


def test_stuck_for_good_needs_the_count_and_the_time() -> None:
    clock, batch = Clock(), records(1)
    p = policy(clock)
    for _ in range(3):
        p.after(batch, BatchResult("s", 1, halted=True, first_unfinished=batch[0]))
    assert not p.stuck_for_good(3, 60.0)
    clock.now += 60.0
    assert p.stuck_for_good(3, 60.0) and not p.stuck_for_good(4, 60.0)


def test_an_exception_from_the_pipeline_is_a_halt_at_the_first_record() -> None:
    class Broken:
        def process(self, shard_id: Any, records: Any, **kwargs: Any) -> BatchResult:
            raise ConnectionError("the de-duplication store is down")

        def waiting(self, shard_id: Any) -> bool:
            return True

    clock, batch = Clock(), records(3)
    p = policy(clock)
    result = p.run(Broken(), batch)  # type: ignore[arg-type]
    assert result.halted and "store is down" in result.halt_reason
    assert result.first_unfinished is batch[0] and result.held == 1 and result.checkpoint is None
    step = p.after(batch, result)
    assert step.again_from == 0 and step.halted and step.checkpoint is None


@pytest.mark.parametrize("durable", [True, False])
def test_the_record_lambda_reports(durable: bool) -> None:
    batch = records(4)
    result = BatchResult("s", 4, finished=3, first_unfinished=batch[3], first_parked=batch[1])
    stuck = stuck_record(result, batch, durable_gate=durable)
    if durable:  # parked in DynamoDB: as safe as delivered
        assert stuck is batch[3] and result.finished == 3
    else:  # parked in this container's memory: Lambda must deliver it again
        assert stuck is batch[1] and result.finished == 1 and "in memory" in result.halt_reason
    assert stuck_record(BatchResult("s", 4, finished=4), batch, durable_gate=False) is None


def test_the_breaker_wait_is_the_longest_wait_of_the_open_breakers() -> None:
    class Breaker:
        def __init__(self, wait: float) -> None:
            self.wait = wait

        def retry_after(self) -> float:
            return self.wait

    class Pipe:
        def __init__(self) -> None:
            self.breakers: dict[str, Breaker] = {}

    pipe = Pipe()
    assert breaker_wait(pipe) == 0.0  # type: ignore[arg-type]  # no breaker: no wait
    pipe.breakers = {"a": Breaker(0.0), "b": Breaker(4.5), "c": Breaker(2.0)}
    assert breaker_wait(pipe) == 4.5  # type: ignore[arg-type]
