"""One shard's side in the standalone worker: what it has read and not finished (:class:`ShardWork`),
and how its checkpoints are recorded in the checkpoint store (:class:`ShardCheckpoints`).

A checkpoint that could not be saved (the store throttles, is down) stays ``unsaved`` and is saved
with the shard's next step; :meth:`ShardCheckpoints.last_save` tries once more when the run ends,
and if that fails a restart reads those records again. :func:`transient` tells the failures tried
again later (throttling, 5xx, connection errors) from the ones that end the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from qldbstream.api.metrics import Metrics
from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.io.aws_errors import classify
from qldbstream.io.shards import Shard, StreamShards
from qldbstream.pipeline.batch import BatchResult
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore
from qldbstream.pipeline.reliability import AdaptiveBatchSize, Disposition
from qldbstream.pipeline.shard_policy import ShardPolicy
from qldbstream.runtimes.worker_report import ShardStatus

__all__ = ["ShardCheckpoints", "ShardWork", "transient"]

log = logging.getLogger("qldbstream.worker")


@dataclass
class ShardWork:
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

    def resume_at(self, result: BatchResult, shard: Shard) -> tuple[str, int] | None:
        """Where a shard read again starts: the batch's checkpoint, else the last one saved, else
        its first record read (sub-sequence -1: that record itself)."""
        if result.checkpoint is not None:
            return result.checkpoint
        if self.checkpoint is not None:
            return self.checkpoint
        first = shard.first_sequence_number
        return None if first is None else (first, -1)

    def status(self, shard: Shard) -> ShardStatus:
        """Where ``shard`` stands (its reading) with this work (checkpoint, batch size, halts)."""
        return ShardStatus(
            shard.shard_id,
            shard.parents,
            shard.records_read,
            self.user_records,
            shard.millis_behind_latest,
            self.iterator_age_ms,
            self.checkpoint,
            self.batch.size,
            shard.finished,
            shard.end_reason if shard.exhausted else None,
            self.policy.halt_reason,
        )


@dataclass(eq=False)
class ShardCheckpoints:
    """Saves the shards' checkpoints in ``store`` under ``key`` (the stream), counting them."""

    store: CheckpointStore
    key: str
    metrics: Metrics
    #: the work of a shard by its id (created on first use)
    work_for: Callable[[str], ShardWork]

    def resume(self, shards: StreamShards) -> None:
        """Read the saved checkpoints: each shard resumes at its own (it wins over the start
        position); an ended shard is not read again (its children may start); then list the shards."""
        saved = self.store.all(self.key)
        shards.resume = {
            cp.shard_id: (cp.sequence_number, cp.sub_sequence_number)
            for cp in saved.values()
            if cp.sequence_number is not None and not cp.shard_ended
        }
        shards.ended = frozenset(cp.shard_id for cp in saved.values() if cp.shard_ended)
        shards.sync(initial=True)
        for shard_id, shard in shards.shards.items():
            work = self.work_for(shard_id)
            cp = saved.get(shard_id)
            if cp is not None and cp.sequence_number is not None:
                work.checkpoint = (cp.sequence_number, cp.sub_sequence_number)
            if shard.resume is not None:
                log.info("shard %s resumes at its checkpoint %s/%d", shard_id, *shard.resume)

    def save(self, checkpoint: Checkpoint, work: ShardWork) -> None:
        """Save ``checkpoint``; on an error it stays ``work.unsaved`` (the step backs off, saves it next)."""
        work.unsaved = checkpoint
        self.store.save(self.key, checkpoint)
        work.unsaved = None
        if checkpoint.sequence_number is not None:
            work.checkpoint = (checkpoint.sequence_number, checkpoint.sub_sequence_number)
        self.metrics.incr("checkpoints", shard=checkpoint.shard_id)

    def last_save(self, work: ShardWork) -> None:
        """One more try for a checkpoint that could not be saved; if it fails, a restart re-reads more."""
        assert work.unsaved is not None
        try:
            self.save(work.unsaved, work)
        except Exception:
            log.exception(
                "the checkpoint %s could not be saved; those records will be read again", work.unsaved
            )

    def save_others(self, result: BatchResult) -> None:
        """Shards whose parked records this batch delivered may checkpoint further now."""
        for other, (seq, sub) in result.other_checkpoints.items():
            if other is None or other == result.shard_id:
                continue
            work = self.work_for(other)
            try:
                self.save(Checkpoint(other, seq, sub), work)
            except Exception as exc:  # saved with that shard's next step (work.unsaved)
                if not transient(exc):
                    raise
                log.warning("shard %s: saving its checkpoint failed (%r); trying again later", other, exc)


def transient(exc: Exception) -> bool:
    """Throttling, 5xx, connection errors (:mod:`qldbstream.io.aws_errors`): try again later. Not a
    missing stream or bad configuration."""
    if isinstance(exc, InputError | ConfigurationError):
        return False
    return classify(exc) is Disposition.RETRY_THEN_HALT
