"""The workflow handler inside the pipeline (local mode, a small custom definition, no AWS):
one execution per revision despite duplicates and redelivery, the failure policy, fraud alerts
from the fraud handler's in-process bus, and the settings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from qldbstream_handlers.fraud import Alert, AlertBus
from qldbstream_handlers.workflow import InMemoryDoneMarkers, TaskContext, TaskRegistry, WorkflowHandler

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.plugins import load_handler
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.errors import ConfigurationError, RetryableError
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import batches, kinesis_records, simulation

DEFINITION = {
    "StartAt": "Record",
    "States": {
        "Record": {"Type": "Task", "Resource": "Record", "ResultPath": "$.recorded", "Next": "Route"},
        "Route": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.source", "StringEquals": "fraud", "Next": "Alert"}],
            "Default": "Done",
        },
        "Alert": {"Type": "Pass", "Result": "alert", "ResultPath": "$.kind", "End": True},
        "Done": {"Type": "Succeed"},
    },
}


class Recorder:
    """The Task callable: counts executions per event id; can fail for chosen documents."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.events: dict[str, dict[str, Any]] = {}
        self.fail: dict[str, Exception] = {}

    def __call__(self, event: dict[str, Any], ctx: TaskContext) -> bool:
        self.calls[event["eventId"]] += 1
        self.events[event["eventId"]] = event
        error = self.fail.get(event.get("documentId", ""))
        if error is not None:
            raise error
        return True


def make_handler(
    tmp_path: Path, recorder: Recorder, bus: AlertBus | None = None, **settings: str
) -> WorkflowHandler:
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(DEFINITION))
    tasks = TaskRegistry()
    tasks.add_task("Record", recorder)
    t = FakeTime()
    return WorkflowHandler(
        {"definition": str(path), "alerts": "true" if bus else "false", **settings},
        tasks=tasks,
        bus=bus,
        sleep=t.sleep,
        clock=t.clock,
    )


def make_pipeline(
    handlers: list[Any], dlq: MemoryDLQ | None = None, store: InMemoryDedupeStore | None = None
) -> Pipeline:
    t = FakeTime()
    return Pipeline(
        handlers,
        dlq=dlq or MemoryDLQ(),
        store=store or InMemoryDedupeStore(),
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1.0)),
        metrics=InMemoryMetrics(),
        clock=t.clock,
        sleep=t.sleep,
    )


def setup(handler: Any, metrics: InMemoryMetrics | None = None) -> None:
    import logging

    from qldbstream.api.handler import SetupContext

    handler.setup(SetupContext({}, logging.getLogger("test"), metrics or InMemoryMetrics()))


def test_one_execution_per_revision_despite_duplicates_and_a_redelivery(tmp_path: Path) -> None:
    sim = simulation(40, seed=31, duplicates=0.25)
    recorder = Recorder()
    handler = make_handler(tmp_path, recorder)
    metrics = InMemoryMetrics()
    setup(handler, metrics)
    ((shard, records),) = kinesis_records(sim).items()
    for batch in batches(records, 7):
        pipeline = make_pipeline([handler])
        pipeline.metrics = metrics
        assert not pipeline.process(shard, batch).halted
    revisions = {f"{r.document_id}-{r.version}" for r in sim.ledger.revisions}
    assert set(recorder.calls) == revisions and set(recorder.calls.values()) == {1}
    # a crash between the runs and the checkpoint: every batch again, with no de-duplication marks
    replay = make_pipeline([handler])
    replay.metrics = metrics
    for batch in batches(records, 7):
        replay.process(shard, batch)
    assert set(recorder.calls.values()) == {1}
    assert metrics.total("workflow_executions", outcome="already-done") >= len(revisions)
    assert metrics.total("workflow_executions", outcome="succeeded") == len(revisions)


def test_the_revision_event_is_plain_json_with_the_revision_identity(tmp_path: Path) -> None:
    sim = simulation(15, seed=32)
    recorder = Recorder()
    handler = make_handler(tmp_path, recorder)
    ((shard, records),) = kinesis_records(sim).items()
    make_pipeline([handler]).process(shard, records)
    by_key = {(r.document_id, r.version): r for r in sim.ledger.revisions}
    for event_id, event in recorder.events.items():
        json.dumps(event)  # JSON all the way down
        revision = by_key[(event["documentId"], event["version"])]
        assert event_id == f"{revision.document_id}-{revision.version}" == event["eventId"]
        assert event["table"] == revision.table and event["txId"] == revision.tx_id
        assert event["source"] == "qldb" and event["fraud"] == {"score": 0, "alerts": []}
        assert event["timestamp"].endswith("Z")
        if event["table"] == "Transactions" and event["operation"] == "insert":
            assert isinstance(event["data"]["amount"], int | float) and isinstance(
                event["data"]["channel"], str
            )


def test_a_failing_execution_is_dead_lettered_and_a_transient_one_holds_the_checkpoint(
    tmp_path: Path,
) -> None:
    sim = simulation(15, seed=33)
    ((shard, records),) = kinesis_records(sim).items()
    target = next(r for r in sim.ledger.revisions if r.table == "Transactions")
    recorder = Recorder()
    recorder.fail[target.document_id] = ValueError("bad amount")
    dlq = MemoryDLQ()
    handler = make_handler(tmp_path, recorder)
    result = make_pipeline([handler], dlq).process(shard, records)
    assert not result.halted and result.dead_lettered == 1
    (letter,) = dlq.letters
    assert (letter.handler, letter.error_type) == ("workflow", "WorkflowFailedError")
    assert letter.document_id == target.document_id and letter.version == 0
    assert f"{target.document_id}-0 failed: ValueError: bad amount" in letter.error_message
    assert not handler.markers.is_done(f"{target.document_id}-0")

    recorder = Recorder()
    recorder.fail[target.document_id] = ConnectionError("compliance service unreachable")
    handler = make_handler(tmp_path, recorder)
    result = make_pipeline([handler]).process(shard, records)
    assert result.halted and result.dead_lettered == 0 and result.first_unfinished is not None
    assert recorder.calls[f"{target.document_id}-0"] == 3  # the pipeline's retries, then it stops


def alert(rule: str, score: float, evidence: list[tuple[str, int]], account: str = "AC0000000001") -> Alert:
    return Alert.create(rule, account, score, evidence, 1_709_283_600_000, {"count": len(evidence)})


def test_alerts_enrich_revision_events_and_start_their_own_executions(tmp_path: Path) -> None:
    sim = simulation(15, seed=34)
    ((shard, records),) = kinesis_records(sim).items()
    tx = next(r for r in sim.ledger.revisions if r.table == "Transactions")
    bus = AlertBus()
    recorder = Recorder()
    handler = make_handler(tmp_path, recorder, bus)
    metrics = InMemoryMetrics()
    setup(handler, metrics)
    burst = alert("rapid_small_transactions", 1.2, [(tx.document_id, 0)])
    high = alert("high_value", 2.5, [(tx.document_id, 0)])
    bus.publish(burst)
    bus.publish(high)
    bus.publish(burst)  # the bus de-duplicates by alert id
    assert recorder.calls == Counter({f"alert-{burst.id}": 1})  # high_value starts none by default
    event = recorder.events[f"alert-{burst.id}"]
    assert event["evidence"] == [{"documentId": tx.document_id, "version": 0}] and event["score"] == 1.2
    make_pipeline([handler]).process(shard, records)
    enriched = recorder.events[f"{tx.document_id}-0"]["fraud"]
    assert enriched["score"] == 2.5 and {a["rule"] for a in enriched["alerts"]} == {
        "high_value",
        "rapid_small_transactions",
    }
    handler.close()
    bus.publish(alert("velocity", 1.0, [(tx.document_id, 0)]))
    assert len(recorder.calls) == len(sim.ledger.revisions) + 1  # unsubscribed


def test_alert_execution_failures_raise_only_when_a_retry_can_help(tmp_path: Path) -> None:
    bus = AlertBus()
    recorder = Recorder()
    handler = make_handler(tmp_path, recorder, bus, alert_rules="all")
    setup(handler)
    recorder.fail[""] = ValueError("cannot investigate")  # alert events have no documentId
    bad = alert("velocity", 1.0, [("doc", 1)])
    bus.publish(bad)  # logged and marked FAILED: the fraud handler is not blocked
    assert handler.markers.is_done(f"alert-{bad.id}")
    recorder.fail[""] = ConnectionError("down")
    with pytest.raises(RetryableError):
        bus.publish(alert("high_value", 1.5, [("doc", 2)]))


def test_the_handler_loads_as_a_plugin_and_bad_settings_fail_at_start_up(tmp_path: Path) -> None:
    handler = load_handler(
        "qldbstream_handlers.workflow:WorkflowHandler",
        {"security_alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:t", "compliance_table_name": "c"},
    )
    assert isinstance(handler, WorkflowHandler) and isinstance(handler.markers, InMemoryDoneMarkers)
    revision = next(r for r in _records(simulation(5, seed=35)) if isinstance(r, RevisionDetails))
    assert handler.wants(revision)
    for settings, message in [
        ({"mode": "remote"}, "needs state_machine_arn"),
        ({"mode": "cloud"}, "local or remote"),
        ({"definition": "example"}, "needs security_alert_topic_arn"),
        ({"definition": str(tmp_path / "missing.json")}, "is not a file"),
        ({"operations": "insert,upsert"}, "unknown"),
        ({"done_markers": "redis"}, "memory or dynamodb"),
        ({"substitutions": "novalue"}, "is not Name=value"),
        (
            {"small_amount_limit": "-1", "security_alert_topic_arn": "t", "compliance_table_name": "c"},
            "non-negative",
        ),
        ({"colour": "blue"}, "unknown settings"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            WorkflowHandler(settings)


def _records(sim: Any) -> list[Any]:
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode

    return [decode(u) for records in kinesis_records(sim).values() for kr in records for u in deaggregate(kr)]
