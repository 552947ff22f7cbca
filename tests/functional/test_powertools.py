"""Powertools interop, with aws-lambda-powertools installed: the batch processor under
``process_partial_response``, ``log_format=inherit`` into a Powertools Logger, the EMF namespace
and dimensions, and ``AWS_LAMBDA_LOG_LEVEL``.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from qldbstream.api import RevisionDetails
from qldbstream.app.config import Settings, load_settings
from qldbstream.core.errors import ConfigurationError
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore
from qldbstream.runtimes.powertools import QldbStreamBatchProcessor
from tests.functional.test_aws_lambda import FakeContext, all_revisions, events, locate, tampered
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import simulation

Key = tuple[str, int]


class Seen:
    """A Powertools record handler: counts the revisions it is given; raises for ``refuse``."""

    def __init__(self, refuse: Key | None = None) -> None:
        self.revisions: Counter[Key] = Counter()
        self.refuse = refuse

    def __call__(self, revision: RevisionDetails) -> None:
        assert isinstance(revision, RevisionDetails)
        key = (revision.document_id, revision.version)
        if key == self.refuse:
            raise ValueError(f"the sink cannot take {key}")
        self.revisions[key] += 1


def processor(t: FakeTime, dlq: Any = None, gate: Any = None, **settings: Any) -> QldbStreamBatchProcessor:
    return QldbStreamBatchProcessor(
        Settings(retry_max_attempts=1, **settings),
        clock=t.clock,
        sleep=t.sleep,
        dlq=dlq,
        store=InMemoryDedupeStore(),
        gate_store=gate or InMemoryGateStore(),
    )


def context(t: FakeTime) -> Any:
    """A Lambda context for Powertools' signature: the time left, on the fake clock."""
    return FakeContext(t)


def failures(response: Mapping[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


@pytest.fixture
def qldbstream_logger() -> Iterator[logging.Logger]:
    """The ``qldbstream`` logger, put back as it was (handlers, level, propagation) afterwards."""
    logger = logging.getLogger("qldbstream")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_process_partial_response_gives_the_record_handler_each_verified_revision_once() -> None:
    sim = simulation(40, aggregate=True, duplicates=0.2)
    t = FakeTime()
    seen = Seen()
    batch = processor(t, dlq=MemoryDLQ())
    for event in events(sim, 9):
        assert process_partial_response(event, seen, batch, context(t)) == {"batchItemFailures": []}
        assert len(batch.success_messages) == len(event["Records"]) and batch.fail_messages == []
    assert set(seen.revisions) == all_revisions(sim)
    assert set(seen.revisions.values()) == {1}  # KPL aggregates unpacked, duplicates dropped


def test_a_forged_revision_never_reaches_the_record_handler_and_is_dead_lettered() -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    bad = tampered(sim)
    t = FakeTime()
    seen = Seen()
    dlq = MemoryDLQ()
    batch = processor(t, dlq=dlq)
    for event in events(sim, 100):
        assert process_partial_response(event, seen, batch, context(t)) == {"batchItemFailures": []}
    assert bad not in seen.revisions
    assert set(seen.revisions) == all_revisions(sim) - {bad}
    assert [(x.stage, (x.document_id, x.version)) for x in dlq.letters] == [("verify", bad)]


def test_without_a_dlq_a_forged_revision_stops_its_shard_and_is_reported() -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    bad = tampered(sim)
    (event,) = events(sim, 100)
    sequence = locate([event])[bad][0]
    t = FakeTime()
    seen = Seen()
    batch = processor(t)  # no DLQ: a poison record halts its shard
    response = process_partial_response(event, seen, batch, context(t))
    assert bad not in seen.revisions
    records = event["Records"]
    start = next(i for i, r in enumerate(records) if r["kinesis"]["sequenceNumber"] == sequence)
    assert failures(response) == [r["kinesis"]["sequenceNumber"] for r in records[start:]]
    assert len(batch.success_messages) == start


def test_a_failing_record_handler_reports_its_kinesis_record_and_every_later_one_of_the_shard() -> None:
    sim = simulation(40, shards=2)  # KPL aggregates: a block summary with its revisions
    batches = events(sim, 100)
    where = locate(batches)
    target = list(where)[len(where) // 2]
    sequence = where[target][0]
    t = FakeTime()
    seen = Seen(refuse=target)
    batch = processor(t)
    reported: list[str] = []
    for event in batches:
        records = event["Records"]
        response = process_partial_response(event, seen, batch, context(t))
        if not any(r["kinesis"]["sequenceNumber"] == sequence for r in records):
            assert failures(response) == []
            continue
        start = next(i for i, r in enumerate(records) if r["kinesis"]["sequenceNumber"] == sequence)
        expected = [r["kinesis"]["sequenceNumber"] for r in records[start:]]
        assert failures(response) == expected
        assert [cast(KinesisStreamRecord, m).kinesis.sequence_number for m in batch.fail_messages] == expected
        reported.extend(expected)
    assert reported and reported[0] == sequence
    assert target not in seen.revisions


def test_a_failing_record_handler_with_a_dlq_is_dead_lettered_not_dropped() -> None:
    sim = simulation(30)
    (event,) = events(sim, 1000)
    target = list(locate([event]))[5]
    t = FakeTime()
    dlq = MemoryDLQ()
    seen = Seen(refuse=target)
    response = process_partial_response(event, seen, processor(t, dlq=dlq), context(t))
    assert response == {"batchItemFailures": []}
    assert [(x.document_id, x.version) for x in dlq.letters] == [target]
    assert [x.handler for x in dlq.letters] == ["record_handler"]


def test_log_format_inherit_hands_qldbstream_records_to_a_powertools_logger(
    monkeypatch: pytest.MonkeyPatch, qldbstream_logger: logging.Logger
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("QLDBSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("QLDBSTREAM_LOG_FORMAT", "inherit")
    out = io.StringIO()
    logger = Logger(service="orders-consumer", logger_handler=logging.StreamHandler(out))
    batch = QldbStreamBatchProcessor(dlq=MemoryDLQ())  # settings from the environment
    assert not [h for h in qldbstream_logger.handlers if getattr(h, "_qldbstream", False)]
    copy_config_to_registered_loggers(source_logger=logger, include={"qldbstream"})
    logger.append_keys(correlation_id="req-42")

    (event,) = events(simulation(10), 100)
    assert process_partial_response(event, Seen(), batch, None) == {"batchItemFailures": []}

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finished = [line for line in lines if "records finished" in line["message"]]
    assert finished, lines
    assert finished[0]["service"] == "orders-consumer"
    assert finished[0]["correlation_id"] == "req-42"
    assert finished[0]["shardId"] == event["Records"][0]["eventID"].partition(":")[0]


def test_emf_metrics_carry_the_configured_namespace_and_dimensions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], qldbstream_logger: logging.Logger
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("QLDBSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("QLDBSTREAM_METRICS", "emf")
    monkeypatch.setenv("QLDBSTREAM_METRICS_NAMESPACE", "Orders/Journal")
    monkeypatch.setenv("QLDBSTREAM_METRICS_DIMENSIONS", "function=orders-consumer, stream=orders")
    batch = QldbStreamBatchProcessor(dlq=MemoryDLQ())
    (event,) = events(simulation(10), 100)
    capsys.readouterr()
    assert process_partial_response(event, Seen(), batch, None) == {"batchItemFailures": []}
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert documents
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Orders/Journal"
        assert {"function", "stream"} <= set(directive["Dimensions"][0])
        assert document["function"] == "orders-consumer" and document["stream"] == "orders"


def test_metrics_dimensions_must_be_name_value_pairs() -> None:
    with pytest.raises(ConfigurationError, match="metrics_dimensions: 'orders' is not Name=Value"):
        load_settings({"QLDBSTREAM_METRICS_DIMENSIONS": "function=f,orders"})
    with pytest.raises(ConfigurationError, match="log_format: 'xml' is not json, text or inherit"):
        load_settings({"QLDBSTREAM_LOG_FORMAT": "xml"})


def test_aws_lambda_log_level_sets_the_level_unless_qldbstream_log_level_is_set() -> None:
    assert load_settings({"AWS_LAMBDA_LOG_LEVEL": "WARN"}).log_level == "WARNING"
    assert load_settings({"AWS_LAMBDA_LOG_LEVEL": "TRACE"}).log_level == "DEBUG"
    assert load_settings({"AWS_LAMBDA_LOG_LEVEL": "ERROR"}).log_level == "ERROR"
    both = {"AWS_LAMBDA_LOG_LEVEL": "ERROR", "QLDBSTREAM_LOG_LEVEL": "DEBUG"}
    assert load_settings(both).log_level == "DEBUG"
    assert load_settings({}).log_level == "INFO"


def test_the_documented_recipe_runs_qldbstreams_stages_inside_a_powertools_record_handler() -> None:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode
    from qldbstream.core.verify import Verifier
    from qldbstream.io.lambda_event import kinesis_record

    sim = simulation(30, tampers=("Transactions#2:data.amount",))
    bad = tampered(sim)
    (event,) = events(sim, 1000)
    powertools = BatchProcessor(event_type=EventType.KinesisDataStreams)
    verifier = Verifier()
    seen: list[Key] = []

    def record_handler(record: Any) -> None:  # the recipe in docs/lambda.md, With Powertools
        for user_record in deaggregate(kinesis_record(record.raw_event, "powertools")):
            journal_record = decode(user_record)
            failed = verifier.verify(journal_record)
            if failed:
                raise ValueError(
                    f"{journal_record.position.describe()}: {', '.join(f.message for f in failed)}"
                )
            if isinstance(journal_record, RevisionDetails):
                seen.append((journal_record.document_id, journal_record.version))

    response = process_partial_response(event, record_handler, powertools, None)
    assert bad not in seen
    assert failures(response) == [locate([event])[bad][0]]


def test_the_record_handler_may_take_the_lambda_context_and_no_old_context_is_reused() -> None:
    first, second = events(simulation(20), 1000)[0], events(simulation(20, seed=4), 1000)[0]
    t = FakeTime()
    contexts: list[Any] = []

    def record_handler(revision: RevisionDetails, lambda_context: Any = None) -> None:
        contexts.append(lambda_context)

    batch = processor(t, dlq=MemoryDLQ())
    live = context(t)
    assert process_partial_response(first, record_handler, batch, live) == {"batchItemFailures": []}
    assert contexts and all(c is live for c in contexts)
    t.now += 3600  # that invocation's context has no time left now
    contexts.clear()
    # a call without a context has no deadline: the old context's is not used
    assert process_partial_response(second, record_handler, batch, None) == {"batchItemFailures": []}
    assert contexts and all(c is None for c in contexts)
