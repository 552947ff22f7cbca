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

Modes (:class:`WorkerOptions`): *continuous* (``TRIM_HORIZON``/``LATEST``, runs until stopped),
*catch-up* (``AT_TIMESTAMP``, then continues), *bounded export* (``end_time``: a shard stops at its
first record that arrived at or after ``end_time``, or after a CONTROL ``COMPLETED`` record; the
run ends when every shard is done). :meth:`Worker.run` can also stop once caught up or idle.

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
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from qldbstream.api.handler import Handler
from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.aws_errors import classify
from qldbstream.io.kinesis_reader import LATEST, MIN_POLL_SPACING, TRIM_HORIZON, StartPosition, kinesis_retry
from qldbstream.io.shards import Shard, StreamShards
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore
from qldbstream.pipeline.reliability import AdaptiveBatchSize, Disposition, RetryPolicy
from qldbstream.pipeline.shard_policy import ShardPolicy

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

    from qldbstream.app.assembly import App
    from qldbstream.app.config import Settings

__all__ = ["ShardStatus", "Worker", "WorkerOptions", "WorkerReport"]

log = logging.getLogger("qldbstream.worker")

StopReason = Literal["stopped", "finished", "caught-up", "idle", "halted"]


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker reads: start and end, batch sizes, polling, backoff, the checkpoint key.

    ``stop_at_completed`` (default: when ``end_time`` is set) ends a shard after a CONTROL
    ``COMPLETED`` record, and then every other shard at its tip. ``halt_backoff`` is the first
    wait (seconds) before a halted shard is read again; it doubles up to ``halt_backoff_cap``.
    ``checkpoint_key`` names the stream in the checkpoint store (default: the stream name).
    """

    start: StartPosition = TRIM_HORIZON
    end_time: datetime | None = None
    stop_at_completed: bool | None = None
    batch_min: int = 10
    batch_max: int = 500
    batch_target_ms: int = 100
    poll_interval: float = 1.0
    halt_backoff: float = 1.0
    halt_backoff_cap: float = 30.0
    checkpoint_key: str | None = None
    #: ``run(until_caught_up=True)`` returns ``"halted"`` once a shard halted this many times in a
    #: row, for at least ``halt_limit_seconds``, while every other shard is caught up
    halt_limit: int = 10
    halt_limit_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.end_time is not None and self.end_time.tzinfo is None:
            raise ConfigurationError("end_time needs a time zone, e.g. 2024-01-01T00:00:00Z")
        if not 1 <= self.batch_min <= self.batch_max <= 10_000:
            raise ConfigurationError(
                "batch sizes need 1 <= batch_min <= batch_max <= 10000 (GetRecords Limit)"
            )
        if self.poll_interval <= 0 or self.halt_backoff <= 0 or self.halt_backoff_cap < self.halt_backoff:
            raise ConfigurationError(
                "poll_interval and halt_backoff must be positive, the cap >= the backoff"
            )

    @property
    def stops_at_completed(self) -> bool:
        return self.end_time is not None if self.stop_at_completed is None else self.stop_at_completed

    @classmethod
    def from_settings(cls, s: Settings, **overrides: object) -> WorkerOptions:
        """Start position, end time and batch sizes from the settings; the key is ``app/stream``."""
        if s.start_position == "LATEST":
            if s.start_time is not None:
                raise ConfigurationError("start_time contradicts start_position LATEST")
            start = LATEST
        elif s.start_time is not None:
            start = StartPosition.at_timestamp(s.start_time)
        else:
            start = TRIM_HORIZON
        values: dict[str, object] = {
            "start": start,
            "end_time": s.end_time,
            "batch_min": s.batch_min,
            "batch_max": s.batch_max,
            "batch_target_ms": s.batch_target_ms,
            "checkpoint_key": f"{s.application_name}/{s.stream_name}",
            **overrides,
        }
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """Where one shard stands: for progress displays, ``qldbstream run`` and tests."""

    shard_id: str
    parents: tuple[str, ...]
    records_read: int
    user_records: int
    millis_behind_latest: int | None
    #: Now minus the ``ApproximateArrivalTimestamp`` of the last record read (0 at the tip).
    iterator_age_ms: float | None
    #: The last checkpoint saved: (sequence number, sub-sequence number).
    checkpoint: tuple[str, int] | None
    batch_limit: int
    finished: bool
    #: Why reading it stopped: ``shard-end``, ``end-time``, ``completed``, ``window-over``, ...
    end_reason: str | None
    #: Why its last batch halted ("" when it did not).
    halt_reason: str


@dataclass(frozen=True)
class WorkerReport:
    """Why :meth:`Worker.run` returned, and where every shard stands."""

    reason: StopReason
    shards: dict[str, ShardStatus]

    @property
    def records(self) -> int:
        return sum(s.records_read for s in self.shards.values())


@dataclass
class _Work:
    """The worker's side of one shard: checkpoint, unfinished work, halts, batch size."""

    batch: AdaptiveBatchSize
    #: its halts and what follows a batch (qldbstream.pipeline.shard_policy, shared by the runtimes)
    policy: ShardPolicy
    checkpoint: tuple[str, int] | None = None
    unsaved: Checkpoint | None = None
    #: Records read but not finished and not to be re-read (held back by the reorder policy).
    pending: bool = False
    user_records: int = 0
    iterator_age_ms: float | None = None
    started: bool = False
    released: bool = False
    #: A transient failure outside the pipeline (Kinesis, the store), for the backoff.
    failures: int = 0

    @property
    def idle(self) -> bool:
        """Nothing read is waiting: no held-back records, no unsaved checkpoint."""
        return not self.pending and self.unsaved is None


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
        self._work: dict[str, _Work] = {}
        self._last_records = 0.0

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
                if until_caught_up and self._caught_up():
                    if self._sync():
                        continue
                    if self._waiting():  # the input is read: what still waits can be decided now
                        self._drain()
                        continue
                    reason = "caught-up"
                    break
                if until_caught_up and self._stuck():
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
                    self._last_save(work)
                if work.started and not work.released:
                    self._release(shard_id, work)
        log.info("worker for stream %s returns: %s", self.stream_name, reason)
        return WorkerReport(reason, self.status())

    def _start(self) -> None:
        self.shards.describe()
        saved = self.store.all(self.key)
        self.shards.resume = {
            cp.shard_id: (cp.sequence_number, cp.sub_sequence_number)
            for cp in saved.values()
            if cp.sequence_number is not None and not cp.shard_ended
        }
        self.shards.ended = frozenset(cp.shard_id for cp in saved.values() if cp.shard_ended)
        self.shards.sync(initial=True)
        for shard_id, shard in self.shards.shards.items():
            work = self._work_for(shard_id)
            cp = saved.get(shard_id)
            if cp is not None and cp.sequence_number is not None:
                work.checkpoint = (cp.sequence_number, cp.sub_sequence_number)
            if shard.resume is not None:
                log.info("shard %s resumes at its checkpoint %s/%d", shard_id, *shard.resume)

    def _sync(self) -> bool:
        """``ListShards`` while running: a transient failure is logged and tried again later."""
        try:
            return self.shards.sync()
        except Exception as exc:
            if not _transient(exc):
                raise
            log.warning(
                "stream %s: listing the shards failed (%r); trying again later", self.stream_name, exc
            )
            self.shards.next_sync_at = self.clock() + self._halt_backoff.max_delay
            return True

    def _work_for(self, shard_id: str) -> _Work:
        work = self._work.get(shard_id)
        if work is None:
            o = self.options
            size = min(max(o.batch_min, 100), o.batch_max)
            batch = AdaptiveBatchSize(o.batch_min, o.batch_max, o.batch_target_ms / 1000, size)
            policy = ShardPolicy(
                shard_id, o.halt_backoff, o.halt_backoff_cap, self.clock, self._breaker_wait, self.rng
            )
            work = self._work[shard_id] = _Work(batch, policy)
        return work

    def _caught_up(self) -> bool:
        return all(
            s.finished or (s.caught_up and not s.exhausted and self._work_for(s.shard_id).idle)
            for s in self.shards.shards.values()
        )

    def _stuck(self) -> bool:
        """Every shard is caught up or finished, except shards halted again and again."""
        o = self.options
        halted = [
            s
            for s in self.shards.shards.values()
            if self._work_for(s.shard_id).policy.stuck_for_good(o.halt_limit, o.halt_limit_seconds)
        ]
        others = [s for s in self.shards.shards.values() if s not in halted]
        return bool(halted) and all(
            s.finished or (s.caught_up and self._work_for(s.shard_id).idle) for s in others
        )

    def _waiting(self) -> bool:
        return any(self.pipeline.waiting(shard_id) for shard_id in self.shards.shards)

    def _drain(self) -> None:
        result = self.pipeline.drain()
        self._save_others(result)
        if self._waiting():  # a DLQ or sink failure: try again after a poll interval
            self._sleep(self.options.poll_interval)

    # -- one shard, one step -----------------------------------------------------------------------

    def _step(self, shard: Shard) -> None:
        work = self._work_for(shard.shard_id)
        work.started = True
        try:
            if work.unsaved is not None:
                self._save(work.unsaved, work)
            elif shard.exhausted:
                self._finish_shard(shard, work)
            else:
                self._poll(shard, work)
            work.failures = 0
        except Exception as exc:
            if not _transient(exc):
                raise
            delay = getattr(exc, "retry_after", None) or self._halt_backoff.delay(work.failures + 1)
            work.failures += 1
            log.warning("shard %s: %r; trying again in %.1f s", shard.shard_id, exc, delay)
            shard.next_poll_at = self.clock() + delay
        if self.on_progress is not None:
            self.on_progress(self._status(shard))

    def _poll(self, shard: Shard, work: _Work) -> None:
        fetch = self.shards.fetch(shard, work.batch.size)
        now = self.clock()
        records = fetch.records
        sid = shard.shard_id
        if fetch.millis_behind_latest is not None:
            self.metrics.gauge("stream_lag_ms", fetch.millis_behind_latest, shard=sid)
        if shard.last_arrival is not None and records:
            work.iterator_age_ms = max(0.0, (now - shard.last_arrival) * 1000)
        elif shard.caught_up:
            work.iterator_age_ms = 0.0
        if work.iterator_age_ms is not None:
            self.metrics.gauge("iterator_age_ms", work.iterator_age_ms, shard=sid)
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
                self._save(Checkpoint(sid, seq, sub), work)
            self._save_others(result)
            if rewound:
                return
        elif work.pending or self.pipeline.waiting(sid):
            # nothing new, but records wait: release what the reorder window or the gate's
            # maximum wait lets go by now (time passes even when no record arrives)
            result = self._process(sid, [])
            work.pending = result.held > 0
            if result.checkpoint is not None and not result.halted:
                self._save(Checkpoint(sid, *result.checkpoint), work)
            self._save_others(result)
        if shard.exhausted:
            self._finish_shard(shard, work)

    def _watermark(self) -> float:
        """The arrival time up to which every shard has been read (journal order, qldbstream.core.order).

        A shard at its tip, read to its end, or not startable yet (a child: its records arrived after
        every record of its parents) holds nothing older; a shard not read yet holds anything."""
        marks = []
        for s in self.shards.shards.values():
            if s.finished or s.exhausted or s.caught_up or not self.shards.parents_done(s):
                continue
            marks.append(float("-inf") if s.last_arrival is None else s.last_arrival)
        return min(marks, default=float("inf"))

    def _process(self, shard_id: str, records: Sequence[KinesisRecord], **process: Any) -> BatchResult:
        self.pipeline.watermark = self._watermark()
        # an exception (e.g. the de-duplication store is down) is a halt: the batch is read again
        return self._work_for(shard_id).policy.run(self.pipeline, records, **process)

    def _breaker_wait(self) -> float:
        """Seconds until every open circuit breaker lets a trial through."""
        return max((b.retry_after() for b in self.pipeline.breakers.values()), default=0.0)

    def _save_others(self, result: BatchResult) -> None:
        """Shards whose parked records this batch delivered may checkpoint further now."""
        for other, (seq, sub) in result.other_checkpoints.items():
            if other is None or other == result.shard_id:
                continue
            work = self._work_for(other)
            try:
                self._save(Checkpoint(other, seq, sub), work)
            except Exception as exc:  # saved with that shard's next step (work.unsaved)
                if not _transient(exc):
                    raise
                log.warning("shard %s: saving its checkpoint failed (%r); trying again later", other, exc)

    def _settle(
        self, shard: Shard, work: _Work, records: Sequence[KinesisRecord], result: BatchResult
    ) -> bool:
        """After a batch: True when the shard is to be read again from its checkpoint."""
        step = work.policy.after(records, result)
        if not step.rewind:
            work.pending = result.first_unfinished is not None or step.waiting_inside
            return False
        delay = step.delay  # 0 when the batch made progress: read the rest again at once
        work.pending = False
        if result.checkpoint is not None:
            resume: tuple[str, int] | None = result.checkpoint
        elif work.checkpoint is not None:
            resume = work.checkpoint
        else:
            first = shard.first_sequence_number
            resume = None if first is None else (first, -1)
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

    def _finish_shard(self, shard: Shard, work: _Work) -> None:
        """An exhausted shard: deliver what is held back, then end it (children may start).

        A shard whose records still wait in the pipeline (parked until their block summary comes,
        held by the reorder policy) does not end: its checkpoint is behind them."""
        if work.pending or self.pipeline.waiting(shard.shard_id):
            result = self._process(shard.shard_id, [])
            self._save_others(result)
            if result.checkpoint is not None:
                self._save(Checkpoint(shard.shard_id, *result.checkpoint), work)
            if result.held or result.halted or self.pipeline.waiting(shard.shard_id):
                shard.next_poll_at = self.clock() + self.options.poll_interval
                return
            work.pending = False
        if shard.end_reason == "shard-end":
            seq, sub = work.checkpoint or (None, 0)
            self._save(Checkpoint(shard.shard_id, seq, sub, shard_ended=True), work)
            self.metrics.incr("shards_ended")
            log.info("shard %s ended; its children may start", shard.shard_id)
        self.shards.finish(shard)
        self._release(shard.shard_id, work)

    def _save(self, checkpoint: Checkpoint, work: _Work) -> None:
        work.unsaved = checkpoint
        self.store.save(self.key, checkpoint)  # on an error the step backs off; saved next time
        work.unsaved = None
        if checkpoint.sequence_number is not None:
            work.checkpoint = (checkpoint.sequence_number, checkpoint.sub_sequence_number)
        self.metrics.incr("checkpoints", shard=checkpoint.shard_id)

    def _last_save(self, work: _Work) -> None:
        """One more try for a checkpoint that could not be saved; if it fails, a restart re-reads more."""
        assert work.unsaved is not None
        try:
            self._save(work.unsaved, work)
        except Exception:
            log.exception(
                "the checkpoint %s could not be saved; those records will be read again", work.unsaved
            )

    def _release(self, shard_id: str, work: _Work) -> None:
        work.released = True
        for handler in self.handlers:
            try:
                handler.shard_released(shard_id)
            except Exception:  # every handler must hear it; the error is logged, not hidden
                log.exception("handler %s failed in shard_released(%s)", handler.name, shard_id)

    def _status(self, shard: Shard) -> ShardStatus:
        work = self._work_for(shard.shard_id)
        return ShardStatus(
            shard.shard_id,
            shard.parents,
            shard.records_read,
            work.user_records,
            shard.millis_behind_latest,
            work.iterator_age_ms,
            work.checkpoint,
            work.batch.size,
            shard.finished,
            shard.end_reason if shard.exhausted else None,
            work.policy.halt_reason,
        )


def _transient(exc: Exception) -> bool:
    """Throttling, 5xx, connection errors (:mod:`qldbstream.io.aws_errors`): try again later. Not a
    missing stream or bad configuration."""
    if isinstance(exc, InputError | ConfigurationError):
        return False
    return classify(exc) is Disposition.RETRY_THEN_HALT
