"""What the standalone worker says about its shards (:class:`ShardStatus`, for progress displays) and
why :meth:`Worker.run <qldbstream.runtimes.worker.Worker.run>` returned (:class:`WorkerReport`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ShardStatus", "StopReason", "WorkerReport"]

#: ``stopped`` (asked to), ``finished`` (every shard), ``caught-up``, ``idle`` (``max_idle``),
#: ``halted`` (a shard stuck for good while every other one is caught up)
StopReason = Literal["stopped", "finished", "caught-up", "idle", "halted"]


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
