"""One shard's policy after a batch, written once for every runtime (sans I/O).

The pipeline says what happened to a batch (:class:`~qldbstream.pipeline.batch.BatchResult`); this module
says what a runtime does next - the same rules in the standalone worker, the KCL record processor
and the Lambda adapter:

* **checkpoint** exactly ``result.checkpoint`` (the pipeline never gives one past a record that is
  neither done, dead-lettered nor durably parked);
* **read again** from the first unfinished record when the batch halted, or when a record is
  unfinished and nothing waits inside the pipeline for it (records held back by the reorder policy
  or parked in memory are the pipeline's to release: feed it again later, even without new records);
* **back off** after a halt, or when nothing finished at all: exponential with jitter from
  ``halt_backoff`` up to ``halt_backoff_cap``, and never before every open circuit breaker lets a
  trial through; progress (some records finished) reads the rest again at once;
* **stuck for good** - ``halt_limit`` halts in a row for at least ``halt_limit_seconds`` - is the
  worker's reason to end ``run --until-caught-up`` with ``halted``;
* **the record to report** (Lambda's batch item failure): the first unfinished record, or the first
  one parked in memory when the gate's store is not durable (another container could not deliver
  it);
* **an exception from the pipeline** (a store that is down) is a halt at the first record;
* **the wait for the breakers** (:func:`breaker_wait`): a halted shard is not tried again before
  every open circuit breaker of the pipeline lets a trial through.

CONTROL ``COMPLETED`` (the end of a bounded QLDB stream) is found by the pipeline while it decodes
(``Pipeline.process(..., stop_at_completed=True)`` stops the batch there and sets
``result.completed``): no runtime decodes records a second time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qldbstream.pipeline.reliability import RetryPolicy

if TYPE_CHECKING:
    from qldbstream.core.records import KinesisRecord
    from qldbstream.pipeline.batch import BatchResult, Pipeline

__all__ = ["ShardPolicy", "Step", "breaker_wait", "stuck_record"]

log = logging.getLogger("qldbstream.pipeline")


@dataclass(frozen=True, slots=True)
class Step:
    """What the runtime does after one batch."""

    #: the position to checkpoint, if any (``(sequence number, sub-sequence number)``)
    checkpoint: tuple[str, int] | None
    #: the shard is to be read again from its checkpoint (a runtime that reads its shard itself)
    rewind: bool
    #: the index (in the batch's records) of the first one to feed again; ``None``: none is unfinished
    again_from: int | None
    #: records wait inside the pipeline (held back, or parked in memory): feed it again later,
    #: with or without new records
    waiting_inside: bool
    #: the shard halted: try again after ``delay`` seconds
    halted: bool
    delay: float
    reason: str
    #: the batch held CONTROL COMPLETED and nothing before it is to be read again: the shard's end
    completed: bool


@dataclass
class ShardPolicy:
    """The halts of one shard and what follows a batch (see the module docstring)."""

    shard_id: str | None
    halt_backoff: float = 1.0
    halt_backoff_cap: float = 30.0
    clock: Callable[[], float] = time.monotonic
    #: seconds until every open circuit breaker lets a trial through
    breaker_wait: Callable[[], float] = lambda: 0.0
    rng: random.Random = field(default_factory=random.Random)
    #: halts in a row, since when (``clock``), and the last reason
    halts: int = 0
    halted_since: float = 0.0
    halt_reason: str = ""

    def __post_init__(self) -> None:
        self._backoff = RetryPolicy(
            base_delay=self.halt_backoff, max_delay=self.halt_backoff_cap, rng=self.rng
        )

    def run(self, pipeline: Pipeline, records: Sequence[KinesisRecord], **process: Any) -> BatchResult:
        """``pipeline.process`` for this shard; an exception (a store that is down) is a halt at the
        first record, which keeps every record unfinished."""
        from qldbstream.pipeline.batch import BatchResult

        try:
            return pipeline.process(self.shard_id, records, **process)
        except Exception as exc:
            log.exception(
                "shard %s: the pipeline failed; %d records will be tried again", self.shard_id, len(records)
            )
            result = BatchResult(self.shard_id, records=len(records), halted=True, halt_reason=repr(exc))
            result.first_unfinished = records[0] if records else None
            result.held = int(pipeline.waiting(self.shard_id))  # what waited inside still does
            return result

    def after(self, records: Sequence[KinesisRecord], result: BatchResult) -> Step:
        """What comes next for the shard (and the halt count it keeps)."""
        again = result.halted or (result.first_unfinished is not None and result.held == 0)
        stuck = result.first_unfinished
        again_from = next((i for i, r in enumerate(records) if r is stuck), 0) if again and stuck else None
        halted = again and (result.halted or result.finished == 0)
        if not halted:
            self.halts, self.halt_reason = 0, ""
            delay = 0.0
        else:
            if self.halts == 0:
                self.halted_since = self.clock()
            self.halts += 1
            self.halt_reason = result.halt_reason or "a record is not finished"
            delay = max(self._backoff.delay(self.halts), self.breaker_wait())
        return Step(
            checkpoint=result.checkpoint,
            rewind=again,
            again_from=again_from,
            waiting_inside=result.held > 0,
            halted=halted,
            delay=delay,
            reason=self.halt_reason,
            completed=result.completed is not None and not again,
        )

    def stuck_for_good(self, limit: int, seconds: float) -> bool:
        """Halted ``limit`` times in a row, for at least ``seconds``."""
        return self.halts >= limit and self.clock() - self.halted_since >= seconds


def breaker_wait(pipeline: Pipeline) -> float:
    """Seconds until every open circuit breaker of ``pipeline`` lets a trial through (0: none is open)."""
    return max((b.retry_after() for b in pipeline.breakers.values()), default=0.0)


def stuck_record(
    result: BatchResult, records: Sequence[KinesisRecord], *, durable_gate: bool
) -> KinesisRecord | None:
    """The record a runtime that cannot hold a checkpoint behind a record (Lambda) reports as
    unfinished: the first unfinished one, or - when the gate's store is in memory - the first record
    parked there, if it comes first (this process may not be the one that delivers it)."""
    stuck = result.first_unfinished
    parked = result.first_parked
    if parked is not None and not durable_gate:
        index = {id(r): i for i, r in enumerate(records)}
        if stuck is None or index[id(parked)] < index[id(stuck)]:
            result.halt_reason = result.halt_reason or (
                "a record waits for its block summary, in memory (set gate_store to dynamodb:<table>)"
            )
            result.finished = index[id(parked)]
            return parked
    return stuck
