"""The standalone worker's side of a shard: where it is read again from, how its checkpoints are
saved, and when a run may end (qldbstream.runtimes.worker_shard, worker_until)."""

from __future__ import annotations

from typing import Any

import pytest

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.errors import ConfigurationError
from qldbstream.io.shards import Shard
from qldbstream.pipeline.batch import BatchResult
from qldbstream.pipeline.checkpoint import Checkpoint, InMemoryCheckpointStore
from qldbstream.pipeline.reliability import AdaptiveBatchSize
from qldbstream.pipeline.shard_policy import ShardPolicy
from qldbstream.runtimes.worker_options import WorkerOptions
from qldbstream.runtimes.worker_shard import ShardCheckpoints, ShardWork, transient
from qldbstream.runtimes.worker_until import caught_up, stuck, watermark


def work(shard_id: str = "s") -> ShardWork:
    return ShardWork(AdaptiveBatchSize(10, 500, 0.1, 100), ShardPolicy(shard_id))


class Graph:
    """The part of StreamShards the run's end reads: the shards and whether a shard may start."""

    def __init__(self, *shards: Shard) -> None:
        self.shards = {s.shard_id: s for s in shards}

    def parents_done(self, shard: Shard) -> bool:
        return all(p not in self.shards or self.shards[p].finished for p in shard.parents)


class DownStore(InMemoryCheckpointStore):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error: Exception | None = error

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        if self.error is not None:
            raise self.error
        super().save(stream, checkpoint)


def test_a_shard_read_again_starts_at_the_batch_checkpoint_else_the_saved_one_else_its_first_record() -> None:
    w, shard = work(), Shard("s", ())
    assert w.resume_at(BatchResult("s", 3), shard) is None  # nothing read, nothing saved
    shard.first_sequence_number = "5"
    assert w.resume_at(BatchResult("s", 3), shard) == ("5", -1)
    w.checkpoint = ("7", 0)
    assert w.resume_at(BatchResult("s", 3), shard) == ("7", 0)
    assert w.resume_at(BatchResult("s", 3, checkpoint=("9", 2)), shard) == ("9", 2)


def test_a_checkpoint_that_cannot_be_saved_stays_unsaved_until_it_can() -> None:
    store, metrics, works = DownStore(ConnectionError("DynamoDB is down")), InMemoryMetrics(), {"s": work()}
    checkpoints = ShardCheckpoints(store, "app/stream", metrics, works.__getitem__)
    with pytest.raises(ConnectionError):
        checkpoints.save(Checkpoint("s", "9", 1), works["s"])
    assert works["s"].unsaved == Checkpoint("s", "9", 1) and not works["s"].idle
    checkpoints.last_save(works["s"])  # still down: logged, kept
    assert works["s"].unsaved is not None and works["s"].checkpoint is None
    store.error = None
    checkpoints.last_save(works["s"])
    assert works["s"].unsaved is None and works["s"].checkpoint == ("9", 1)
    assert store.all("app/stream")["s"] == Checkpoint("s", "9", 1) and metrics.total("checkpoints") == 1


def test_other_shards_checkpoint_what_a_batch_delivered_for_them() -> None:
    store, works = InMemoryCheckpointStore(), {"a": work("a"), "b": work("b")}
    checkpoints = ShardCheckpoints(store, "k", InMemoryMetrics(), works.__getitem__)
    result = BatchResult("a", 1, other_checkpoints={"a": ("1", 0), "b": ("4", 0), None: ("5", 0)})
    checkpoints.save_others(result)
    assert store.all("k") == {"b": Checkpoint("b", "4", 0)} and works["b"].checkpoint == ("4", 0)
    failing = ShardCheckpoints(
        DownStore(ConfigurationError("no table")), "k", InMemoryMetrics(), works.__getitem__
    )
    with pytest.raises(ConfigurationError):  # not transient: the run ends
        failing.save_others(result)


@pytest.mark.parametrize(
    ("error", "again"), [(ConnectionError("reset"), True), (ConfigurationError("no stream"), False)]
)
def test_what_is_tried_again(error: Exception, again: bool) -> None:
    assert transient(error) is again


def test_the_watermark_is_the_oldest_arrival_of_a_shard_still_being_read() -> None:
    tip, reading, unread, child = Shard("tip", ()), Shard("a", ()), Shard("b", ()), Shard("c", ("a",))
    tip.caught_up, tip.last_arrival = True, 1.0
    reading.last_arrival = 50.0
    assert watermark(Graph(tip, reading, child)) == 50.0  # the child cannot start: holds nothing older
    assert watermark(Graph(tip, reading, unread)) == float("-inf")  # not read yet: anything
    assert watermark(Graph(tip)) == float("inf")


def test_caught_up_and_stuck() -> None:
    a, b = Shard("a", ()), Shard("b", ())
    a.caught_up = b.caught_up = True
    works = {"a": work("a"), "b": work("b")}
    graph: Any = Graph(a, b)
    assert caught_up(graph, works.__getitem__)
    works["b"].pending = True  # records held back: not idle
    assert not caught_up(graph, works.__getitem__)
    options = WorkerOptions(halt_limit=2, halt_limit_seconds=0.0)
    assert not stuck(graph, works.__getitem__, options)
    works["b"].policy.halts = 2
    assert stuck(graph, works.__getitem__, options)
