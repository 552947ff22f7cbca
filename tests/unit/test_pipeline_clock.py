"""The pipeline reads time only through its injected clocks: the wall clock dates dead letters and
measures the iterator age (no ``time.time()`` inside the pipeline)."""

from __future__ import annotations

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import Pipeline
from tests.support.fakes import MemoryDLQ

NOW = 1_700_000_000.0


def test_dead_letters_are_dated_by_the_injected_wall_clock() -> None:
    dlq = MemoryDLQ()
    pipeline = Pipeline([], dlq=dlq, wall_clock=lambda: NOW)
    record = KinesisRecord(b"not ion", "1", "pk", "shardId-0", NOW - 5, source="test")

    assert pipeline.dead_letter("decode", ValueError("bad"), record)

    (letter,) = dlq.letters
    assert letter.first_failure_time == letter.last_failure_time == NOW


def test_the_iterator_age_is_measured_on_the_injected_wall_clock() -> None:
    metrics = InMemoryMetrics()
    pipeline = Pipeline([], dlq=MemoryDLQ(), metrics=metrics, wall_clock=lambda: NOW)
    record = KinesisRecord(b"not ion", "1", "pk", "shardId-0", NOW - 2.5, source="test")

    pipeline.process("shardId-0", [record])

    assert metrics.gauges[("iterator_age_ms", (("shard", "shardId-0"),))] == 2500.0
