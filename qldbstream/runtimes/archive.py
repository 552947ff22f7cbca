"""Replaying archives: a bounded source's records through the app's pipeline and handlers.

::

    source.batches(resume)  ─► one pseudo-shard's records (a Kinesis shard or file, an export's strand)
        ─► Pipeline.process(pseudo-shard, records) ─► checkpoint as the BatchResult says
        ─► halted? save what finished, end the run ("halted")
    end of the source ─► drain what waits for a block summary ─► every pseudo-shard ended, released

The sources (:mod:`qldbstream.io.archive_sources`) give the records in the order they are to be
processed: saved Kinesis records per shard by sequence number, shards merged by arrival time (the
pipeline then delivers in journal order, :mod:`qldbstream.core.order`); an export's blocks in
journal order. Every guarantee is the pipeline's, as in every runtime: verified before delivery
(a whole block at hand admits its revisions), de-duplicated per handler, and a checkpoint never
past a record that is neither done nor dead-lettered.

Checkpoints are kept in any :class:`~qldbstream.pipeline.checkpoint.CheckpointStore` under ``key``
(the application and the source's location) and the pseudo-shard: a run resumes after what its
checkpoints cover, and a pseudo-shard replayed to its end is marked ``shard_ended`` (a second run
of a finished replay reads nothing). A record read again (part of an aggregate or a block the
checkpoint covers in part) is skipped by the de-duplication store for the handlers that did it.

Unlike the standalone worker (:mod:`qldbstream.runtimes.worker`), which polls a live stream and
retries a halted shard for ever, a replay is bounded: a halt (the pipeline gave up retrying a
handler, the DLQ or a store is down) saves what finished and ends the run with ``halted`` - run it
again once the cause is fixed. It reports with the worker's
:class:`~qldbstream.runtimes.worker_report.WorkerReport`, one :class:`ShardStatus` per pseudo-shard.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qldbstream.api.handler import Handler
from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore, sequence_key
from qldbstream.pipeline.runtime_duties import release_shard
from qldbstream.pipeline.shard_policy import ShardPolicy
from qldbstream.runtimes.worker_report import ShardStatus, StopReason, WorkerReport

__all__ = ["ArchiveReplay", "ReplayCounts", "ReplaySource"]

log = logging.getLogger("qldbstream.archive")

#: why a pseudo-shard's reading stopped when the source has no more of it
END_REASON = "archive-end"


class _Batch(Protocol):
    @property
    def shard_id(self) -> str: ...
    @property
    def records(self) -> Sequence[KinesisRecord]: ...
    @property
    def watermark(self) -> float: ...


class ReplaySource(Protocol):
    """What :class:`ArchiveReplay` reads (:class:`~qldbstream.io.archive_sources.KinesisArchive`,
    :class:`~qldbstream.io.archive_sources.ExportArchive`)."""

    #: names the archive in the checkpoint store (with the application's name)
    location: str
    #: whether pseudo-shards are merged (the pipeline should deliver in journal order)
    journal_order: bool

    def totals(self) -> dict[str, int]:
        """Records per pseudo-shard, when known up front (progress)."""
        ...

    def batches(self, resume: Mapping[str, tuple[str, int]]) -> Iterator[_Batch]: ...


@dataclass
class ReplayCounts:
    """What the handlers got, over the whole run (for the end line and the progress display)."""

    delivered: int = 0
    duplicates: int = 0
    late: int = 0
    dead_lettered: int = 0

    def add(self, result: BatchResult) -> None:
        self.delivered += sum(result.delivered.values())
        self.duplicates += result.duplicates
        self.late += result.late
        self.dead_lettered += result.dead_lettered

    def describe(self) -> str:
        return (
            f"{self.delivered} deliveries, {self.duplicates} duplicates skipped, "
            f"{self.late} late, {self.dead_lettered} dead-lettered"
        )


@dataclass
class _Work:
    policy: ShardPolicy
    total: int | None = None
    records_read: int = 0
    user_records: int = 0
    checkpoint: tuple[str, int] | None = None
    finished: bool = False
    started: bool = False
    released: bool = False

    def status(self, shard_id: str) -> ShardStatus:
        return ShardStatus(
            shard_id,
            (),
            self.records_read,
            self.user_records,
            None,
            None,
            self.checkpoint,
            0,
            self.finished,
            END_REASON if self.finished else None,
            self.policy.halt_reason,
        )


@dataclass(eq=False)
class ArchiveReplay:
    """Replays ``source`` through ``pipeline``, checkpointing in ``store`` under ``key``.

    ``handlers`` are told ``shard_released`` for each pseudo-shard read; ``on_progress`` is called with
    a pseudo-shard's :class:`ShardStatus` after every batch. ``sleep`` waits while records held back
    inside the pipeline (the reorder policy) are released at the end, at most ``end_wait`` seconds.
    """

    source: ReplaySource
    pipeline: Pipeline
    store: CheckpointStore
    key: str
    handlers: Sequence[Handler] = ()
    metrics: Metrics = field(default_factory=NullMetrics)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] | None = None
    end_wait: float | None = None
    on_progress: Callable[[ShardStatus], None] | None = None
    counts: ReplayCounts = field(default_factory=ReplayCounts)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._work: dict[str, _Work] = {}
        self._sleep = self.sleep or self._stopping.wait
        for shard_id, total in self.source.totals().items():
            self._work_for(shard_id).total = total

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (thread- and signal-safe)."""
        self._stopping.set()

    def totals(self) -> dict[str, int | None]:
        """Records per pseudo-shard when the source knows them up front (progress displays)."""
        return {shard_id: work.total for shard_id, work in self._work.items()}

    def status(self) -> dict[str, ShardStatus]:
        return {shard_id: work.status(shard_id) for shard_id, work in self._work.items()}

    def _work_for(self, shard_id: str) -> _Work:
        work = self._work.get(shard_id)
        if work is None:
            policy = ShardPolicy(shard_id, clock=self.clock, rng=random.Random(0))
            work = self._work[shard_id] = _Work(policy)
        return work

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> WorkerReport:
        """Replay until the source ends (``finished``), a batch halts (``halted``) or :meth:`stop`
        (``stopped``). Every pseudo-shard read is released before returning, also on errors."""
        saved = self.store.all(self.key)
        resume: dict[str, tuple[str, int]] = {}
        for shard_id, cp in saved.items():
            work = self._work_for(shard_id)
            if cp.sequence_number is not None:
                resume[shard_id] = work.checkpoint = (cp.sequence_number, cp.sub_sequence_number)
                log.info("%s: %s resumes after its checkpoint %s/%d", self.key, shard_id, *resume[shard_id])
            work.finished = cp.shard_ended
        reason: StopReason = "finished"
        try:
            for batch in self.source.batches(resume):
                if self._stopping.is_set():
                    reason = "stopped"
                    break
                if self._work_for(batch.shard_id).finished:
                    continue  # replayed to its end by an earlier run
                if not self._feed(batch):
                    reason = "halted"
                    break
            else:
                reason = "finished" if self._finish() else "halted"
        finally:
            for shard_id, work in self._work.items():
                if work.started and not work.released:
                    work.released = True
                    release_shard(self.handlers, shard_id, log)
        log.info("replay of %s returns: %s (%s)", self.key, reason, self.counts.describe())
        return WorkerReport(reason, self.status())

    def _feed(self, batch: _Batch) -> bool:
        """One batch, read again from its first unfinished record while it makes progress; False on a halt."""
        shard_id = batch.shard_id
        work = self._work_for(shard_id)
        work.started = True
        self.pipeline.watermark = batch.watermark
        records = list(batch.records)
        work.records_read += len(records)
        halted = False
        while records:
            result = work.policy.run(self.pipeline, records)
            self._account(work, result)
            step = work.policy.after(records, result)
            if not step.rewind:
                break
            if step.halted:
                log.warning("%s halted (%s); what finished is checkpointed", shard_id, step.reason)
                halted = True
                break
            records = records[step.again_from or 0 :]
        if self.on_progress is not None:
            self.on_progress(work.status(shard_id))
        return not halted

    def _account(self, work: _Work, result: BatchResult) -> None:
        self.counts.add(result)
        work.user_records += result.user_records
        if result.checkpoint is not None and result.shard_id is not None:
            self._save(Checkpoint(result.shard_id, *result.checkpoint))
        for other, position in result.other_checkpoints.items():
            if other is not None and other != result.shard_id:
                self._save(Checkpoint(other, *position))

    def _save(self, checkpoint: Checkpoint) -> None:
        self.store.save(self.key, checkpoint)
        work = self._work_for(checkpoint.shard_id)
        position = (checkpoint.sequence_number, checkpoint.sub_sequence_number)
        if checkpoint.sequence_number is not None and (
            work.checkpoint is None or sequence_key(*position) > sequence_key(*work.checkpoint)
        ):  # the store keeps the furthest: a record read again (a block summary) moves nothing back
            work.checkpoint = (checkpoint.sequence_number, checkpoint.sub_sequence_number)
        self.metrics.incr("checkpoints", shard=checkpoint.shard_id)

    def _finish(self) -> bool:
        """The source is read: decide what still waits, then end every pseudo-shard. False on a halt."""
        drained = self.pipeline.drain()  # parked for a block summary the archive does not hold
        self.counts.add(drained)
        for other, position in drained.other_checkpoints.items():
            if other is not None:
                self._save(Checkpoint(other, *position))
        if drained.halted:  # e.g. the DLQ is down: what waited stays unfinished, checkpoints behind it
            started = [w for w in self._work.values() if w.started] or list(self._work.values())
            for work in started[:1]:
                work.policy.halt_reason = drained.halt_reason or "records wait for their block summary"
            return False
        wait = self.pipeline.settings.reorder_window + 1.0 if self.end_wait is None else self.end_wait
        until = self.clock() + wait
        while waiting := [sid for sid, w in self._work.items() if w.started and self.pipeline.waiting(sid)]:
            if self.clock() >= until or self._stopping.is_set():
                for shard_id in waiting:
                    policy = self._work_for(shard_id).policy
                    policy.halt_reason = policy.halt_reason or "records still wait in the pipeline"
                return False
            for shard_id in waiting:  # held back by the reorder policy: released as time passes
                work = self._work_for(shard_id)
                result = work.policy.run(self.pipeline, [])
                self._account(work, result)
                if result.halted:
                    work.policy.halt_reason = result.halt_reason or "a record is not finished"
                    return False
            if any(self.pipeline.waiting(sid) for sid in waiting):
                self._sleep(min(0.5, max(0.0, until - self.clock())))
        for shard_id, work in self._work.items():
            if work.started and not work.finished:
                seq, sub = work.checkpoint or (None, 0)
                self.store.save(self.key, Checkpoint(shard_id, seq, sub, shard_ended=True))
                work.finished = True
        return True
