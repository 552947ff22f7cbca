"""When the standalone worker's run may end, and how far every shard has been read.

* :func:`caught_up` - ``run(until_caught_up=True)``: every shard is finished, or at its tip (an
  empty batch at ``MillisBehindLatest`` 0, not read to its end) with nothing read still waiting;
* :func:`stuck` - ``run(until_caught_up=True)`` returns ``halted``: some shards halted again and
  again (``halt_limit`` times, for ``halt_limit_seconds``) while every other one is caught up;
* :func:`watermark` - the arrival time up to which every shard has been read, for journal order
  (:mod:`qldbstream.core.order`).
"""

from __future__ import annotations

from collections.abc import Callable

from qldbstream.io.shards import StreamShards
from qldbstream.runtimes.worker_options import WorkerOptions
from qldbstream.runtimes.worker_shard import ShardWork

__all__ = ["caught_up", "stuck", "watermark"]


def caught_up(shards: StreamShards, work_for: Callable[[str], ShardWork]) -> bool:
    """Every shard is finished, or at its tip and not exhausted, with nothing read still waiting."""
    return all(
        s.finished or (s.caught_up and not s.exhausted and work_for(s.shard_id).idle)
        for s in shards.shards.values()
    )


def stuck(shards: StreamShards, work_for: Callable[[str], ShardWork], options: WorkerOptions) -> bool:
    """Every shard is caught up or finished, except shards halted again and again."""
    halted = [
        s
        for s in shards.shards.values()
        if work_for(s.shard_id).policy.stuck_for_good(options.halt_limit, options.halt_limit_seconds)
    ]
    others = [s for s in shards.shards.values() if s not in halted]
    return bool(halted) and all(s.finished or (s.caught_up and work_for(s.shard_id).idle) for s in others)


def watermark(shards: StreamShards) -> float:
    """The arrival time up to which every shard has been read (journal order, qldbstream.core.order).

    A shard at its tip, read to its end, or not startable yet (a child: its records arrived after
    every record of its parents) holds nothing older; a shard not read yet holds anything."""
    marks = []
    for s in shards.shards.values():
        if s.finished or s.exhausted or s.caught_up or not shards.parents_done(s):
            continue
        marks.append(float("-inf") if s.last_arrival is None else s.last_arrival)
    return min(marks, default=float("inf"))
