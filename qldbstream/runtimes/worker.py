"""The standalone worker: one process reads every shard of a stream and checkpoints in a store.

::

    ListShards ─► for the ready shard due first:  GetRecords (Limit: adaptive)
                      ─► Pipeline.process(shard, records) ─► checkpoint as the BatchResult says
                      ─► halted? re-read from the checkpoint after a backoff
                      ─► closed and read to its end, all finished? shard_ended, shard_released, children

A child shard is read only once all its parents are finished, also across restarts (the store
remembers ``shard_ended``). A checkpoint found in the store wins over the start position. The
worker polls one shard at a time in one thread, at most 5 ``GetRecords`` calls per second per shard,
and shares one :class:`~qldbstream.pipeline.batch.Pipeline` between all shards.

Modes (:class:`~qldbstream.runtimes.worker_options.WorkerOptions`): continuous, catch-up, bounded
export. :meth:`Worker.run` can also stop once caught up or idle (:mod:`~qldbstream.runtimes.worker_until`).
A shard's unfinished work and its checkpoints: :mod:`~qldbstream.runtimes.worker_shard`; what the
worker reports: :mod:`~qldbstream.runtimes.worker_report`.

What happens next on errors: a halted batch (breaker open, DLQ or sink down, an unexpected error in
the pipeline) leaves the checkpoint where it is and the shard is read again from it after a growing
backoff; throttling, expired iterators and transient Kinesis or checkpoint-store errors are retried
per shard with backoff; a missing stream raises :class:`~qldbstream.core.errors.InputError` and a bad
configuration :class:`~qldbstream.core.errors.ConfigurationError` (the run ends; checkpoints stay).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qldbstream.api.handler import Handler
from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import MIN_POLL_SPACING, kinesis_retry
from qldbstream.io.shards import Shard, StreamShards
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore
from qldbstream.pipeline.reliability import AdaptiveBatchSize, RetryPolicy
from qldbstream.pipeline.runtime_duties import gauge_lag, iterator_age_ms, release_shard
from qldbstream.pipeline.shard_policy import ShardPolicy, breaker_wait
from qldbstream.runtimes.worker_options import WorkerOptions
from qldbstream.runtimes.worker_report import ShardStatus, StopReason, WorkerReport
from qldbstream.runtimes.worker_shard import ShardCheckpoints, ShardWork, transient
from qldbstream.runtimes.worker_until import caught_up, stuck, watermark

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

    from qldbstream.app.assembly import App

__all__ = ["ShardStatus", "Worker", "WorkerOptions", "WorkerReport"]

log = logging.getLogger("qldbstream.worker")


@dataclass(eq=False)
class Worker:
    """Reads ``stream_name`` with ``client``, runs batches through ``pipeline``, checkpoints in ``store``.

    ``handlers`` are told ``shard_released``; ``clock`` is epoch seconds; ``sleep`` waits (the default
    wakes up at once on :meth:`stop`); ``on_progress`` is called with a shard's :class:`ShardStatus`
    after every poll of it.
    """

    client: KinesisClient
    stream_name: str
    pipeline: Pipeline
    store: CheckpointStore
    handlers: Sequence[Handler] = ()
    options: WorkerOptions = field(default_factory=WorkerOptions)
    metrics: Metrics = field(default_factory=NullMetrics)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] | None = None
    rng: random.Random = field(default_factory=random.Random)
    on_progress: Callable[[ShardStatus], None] | None = None

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._sleep = self.sleep or self._wait
        o = self.options
        self.key = o.checkpoint_key or self.stream_name
        self.shards = StreamShards(
            self.client,
            self.stream_name,
            o.start,
            None if o.end_time is None else o.end_time.timestamp(),
            self.clock,
            kinesis_retry(rng=self.rng),
            self._sleep,
        )
        #: waits before a shard that failed outside the pipeline is tried again (only its delays)
        self._halt_backoff = RetryPolicy(
            base_delay=o.halt_backoff, max_delay=o.halt_backoff_cap, rng=self.rng
        )
        self._work: dict[str, ShardWork] = {}
        self._last_records = 0.0
        self.checkpoints = ShardCheckpoints(self.store, self.key, self.metrics, self._work_for)

    @classmethod
    def from_app(
        cls,
        app: App,
        store: CheckpointStore | None = None,
        *,
        options: WorkerOptions | None = None,
        **kwargs: Any,
    ) -> Worker:
        """The worker the settings describe: stream, start/end, batch sizes, the DynamoDB checkpoint table.

        Raises :class:`~qldbstream.core.errors.ConfigurationError` when no stream is configured.
        """
        s = app.settings
        if not s.stream_name:
            raise ConfigurationError(
                "no stream to read: set stream_name (QLDBSTREAM_STREAM_NAME or --stream)"
            )
        if store is None:
            from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore

            store = DynamoDBCheckpointStore(app.client("dynamodb"), s.checkpoint_table)
        options = options or WorkerOptions.from_settings(s)
        return cls(
            app.client("kinesis"),
            s.stream_name,
            app.pipeline(journal_order=True),
            store,
            app.handlers,
            options,
            app.metrics,
            **kwargs,
        )

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # -- control -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (thread- and signal-safe)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def status(self) -> dict[str, ShardStatus]:
        """Every known shard's :class:`ShardStatus` (for progress displays)."""
        return {shard_id: self._status(shard) for shard_id, shard in self.shards.shards.items()}

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, *, until_caught_up: bool = False, max_idle: float | None = None) -> WorkerReport:
        """Process until stopped, until every shard is finished (bounded export, closed stream), or:

        * ``until_caught_up`` - every open shard returned an empty batch at ``MillisBehindLatest`` 0
          with everything read finished and checkpointed, and ``ListShards`` shows nothing new;
        * ``max_idle`` - no record was read from any shard for this many seconds.

        Every shard read is released (``shard_released``) before returning, also on errors.
        """
        self._start()
        self._last_records = self.clock()
        reason: StopReason = "stopped"
        try:
            while not self._stopping.is_set():
                graph = self.shards.shards
                if all(s.finished for s in graph.values()):
                    reason = "finished"
                    break
                if until_caught_up and caught_up(self.shards, self._work_for):
                    if self._sync():
                        continue
                    if self._waiting():  # the input is read: what still waits can be decided now
                        self._drain()
                        continue
                    reason = "caught-up"
                    break
                if until_caught_up and stuck(self.shards, self._work_for, self.options):
                    reason = "halted"
                    break
                if max_idle is not None and self.clock() - self._last_records >= max_idle:
                    reason = "idle"
                    break
                if self.clock() >= self.shards.next_sync_at:
                    self._sync()
                due = [s for s in graph.values() if not s.finished and self.shards.parents_done(s)]
                if not due:  # pragma: no cover - a parent always exists among the unfinished shards
                    self._sleep(self.options.poll_interval)
                    continue
                shard = min(due, key=lambda s: s.next_poll_at)
                wait = shard.next_poll_at - self.clock()
                if wait > 0:
                    self._sleep(min(wait, self.options.poll_interval))
                    continue
                self._step(shard)
        finally:
            for shard_id, work in self._work.items():
                if work.unsaved is not None:
                    self.checkpoints.last_save(work)
                if work.started and not work.released:
                    self._release(shard_id, work)
        log.info("worker for stream %s returns: %s", self.stream_name, reason)
        return WorkerReport(reason, self.status())

    def _start(self) -> None:
        self.shards.describe()
        self.checkpoints.resume(self.shards)

    def _sync(self) -> bool:
        """``ListShards`` while running: a transient failure is logged and tried again later."""
        try:
            return self.shards.sync()
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning(
                "stream %s: listing the shards failed (%r); trying again later", self.stream_name, exc
            )
            self.shards.next_sync_at = self.clock() + self._halt_backoff.max_delay
            return True

    def _work_for(self, shard_id: str) -> ShardWork:
        work = self._work.get(shard_id)
        if work is None:
            o = self.options
            size = min(max(o.batch_min, 100), o.batch_max)
            batch = AdaptiveBatchSize(o.batch_min, o.batch_max, o.batch_target_ms / 1000, size)
            policy = ShardPolicy(
                shard_id, o.halt_backoff, o.halt_backoff_cap, self.clock, self._breaker_wait, self.rng
            )
            work = self._work[shard_id] = ShardWork(batch, policy)
        return work

    def _waiting(self) -> bool:
        return any(self.pipeline.waiting(shard_id) for shard_id in self.shards.shards)

    def _drain(self) -> None:
        result = self.pipeline.drain()
        self.checkpoints.save_others(result)
        if self._waiting():  # a DLQ or sink failure: try again after a poll interval
            self._sleep(self.options.poll_interval)

    # -- one shard, one step -----------------------------------------------------------------------

    def _step(self, shard: Shard) -> None:
        work = self._work_for(shard.shard_id)
        work.started = True
        try:
            if work.unsaved is not None:
                self.checkpoints.save(work.unsaved, work)
            elif shard.exhausted:
                self._finish_shard(shard, work)
            else:
                self._poll(shard, work)
            work.failures = 0
        except Exception as exc:
            if not transient(exc):
                raise
            delay = getattr(exc, "retry_after", None) or self._halt_backoff.delay(work.failures + 1)
            work.failures += 1
            log.warning("shard %s: %r; trying again in %.1f s", shard.shard_id, exc, delay)
            shard.next_poll_at = self.clock() + delay
        if self.on_progress is not None:
            self.on_progress(self._status(shard))

    def _poll(self, shard: Shard, work: ShardWork) -> None:
        fetch = self.shards.fetch(shard, work.batch.size)
        now = self.clock()
        records = fetch.records
        sid = shard.shard_id
        if shard.last_arrival is not None and records:
            work.iterator_age_ms = iterator_age_ms(now, shard.last_arrival)
        elif shard.caught_up:
            work.iterator_age_ms = 0.0
        gauge_lag(self.metrics, sid, fetch.millis_behind_latest, work.iterator_age_ms)
        shard.next_poll_at = now + (self.options.poll_interval if shard.caught_up else MIN_POLL_SPACING)
        if records:
            self._last_records = now
            started = self.clock()
            # the pipeline stops the batch at CONTROL COMPLETED (the end of this QLDB stream)
            result = self._process(sid, records, stop_at_completed=self.options.stops_at_completed)
            work.batch.observe(len(records), self.clock() - started)
            self.metrics.gauge("batch_limit", work.batch.size, shard=sid)
            work.user_records += result.user_records
            completed = result.completed
            if completed is not None:
                shard.exhaust("completed")  # undone by a rewind
            rewound = self._settle(shard, work, records, result)
            if completed is not None and not rewound:
                log.info("shard %s: CONTROL COMPLETED at %s", sid, completed.sequence_number)
                self.shards.stop_at_tip = True  # the QLDB stream is complete: others stop at their tip
            if result.checkpoint is not None:
                seq, sub = result.checkpoint
                self.checkpoints.save(Checkpoint(sid, seq, sub), work)
            self.checkpoints.save_others(result)
            if rewound:
                return
        elif work.pending or self.pipeline.waiting(sid):
            # nothing new, but records wait: release what the reorder window or the gate's
            # maximum wait lets go by now (time passes even when no record arrives)
            result = self._process(sid, [])
            work.pending = result.held > 0
            if result.checkpoint is not None and not result.halted:
                self.checkpoints.save(Checkpoint(sid, *result.checkpoint), work)
            self.checkpoints.save_others(result)
        if shard.exhausted:
            self._finish_shard(shard, work)

    def _process(self, shard_id: str, records: Sequence[KinesisRecord], **process: Any) -> BatchResult:
        self.pipeline.watermark = watermark(self.shards)
        # an exception (e.g. the de-duplication store is down) is a halt: the batch is read again
        return self._work_for(shard_id).policy.run(self.pipeline, records, **process)

    def _breaker_wait(self) -> float:
        """Seconds until every open circuit breaker lets a trial through."""
        return breaker_wait(self.pipeline)

    def _settle(
        self, shard: Shard, work: ShardWork, records: Sequence[KinesisRecord], result: BatchResult
    ) -> bool:
        """After a batch: True when the shard is to be read again from its checkpoint."""
        step = work.policy.after(records, result)
        if not step.rewind:
            work.pending = result.first_unfinished is not None or step.waiting_inside
            return False
        delay = step.delay  # 0 when the batch made progress: read the rest again at once
        work.pending = False
        resume = work.resume_at(result, shard)
        self.shards.rewind(shard, resume)
        shard.next_poll_at = self.clock() + delay
        if step.halted:
            self.metrics.incr("shard_halts", shard=shard.shard_id)
        log.warning(
            "shard %s %s (%s); reading it again from %s in %.1f s",
            shard.shard_id,
            "halted" if step.halted else "stopped at an unfinished record",
            step.reason or "a record is not finished",
            "its checkpoint" if resume and resume[1] >= 0 else "the first record read",
            delay,
        )
        return True

    def _finish_shard(self, shard: Shard, work: ShardWork) -> None:
        """An exhausted shard: deliver what is held back, then end it (children may start).

        A shard whose records still wait in the pipeline (parked until their block summary comes,
        held by the reorder policy) does not end: its checkpoint is behind them."""
        if work.pending or self.pipeline.waiting(shard.shard_id):
            result = self._process(shard.shard_id, [])
            self.checkpoints.save_others(result)
            if result.checkpoint is not None:
                self.checkpoints.save(Checkpoint(shard.shard_id, *result.checkpoint), work)
            if result.held or result.halted or self.pipeline.waiting(shard.shard_id):
                shard.next_poll_at = self.clock() + self.options.poll_interval
                return
            work.pending = False
        if shard.end_reason == "shard-end":
            seq, sub = work.checkpoint or (None, 0)
            self.checkpoints.save(Checkpoint(shard.shard_id, seq, sub, shard_ended=True), work)
            self.metrics.incr("shards_ended")
            log.info("shard %s ended; its children may start", shard.shard_id)
        self.shards.finish(shard)
        self._release(shard.shard_id, work)

    def _release(self, shard_id: str, work: ShardWork) -> None:
        work.released = True
        release_shard(self.handlers, shard_id, log)

    def _status(self, shard: Shard) -> ShardStatus:
        return self._work_for(shard.shard_id).status(shard)
