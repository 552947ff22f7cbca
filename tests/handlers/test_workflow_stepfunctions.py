"""Remote mode against moto server's Step Functions: one execution per revision, named
``<documentId>-<version>``, started once however often the revision is delivered.

moto (5.2) records executions but does not run Task states (they stay RUNNING unless moto's
optional execution engine is turned on), so these tests check what the handler owns: the names,
the inputs, idempotent starts - both answers Step Functions gives to a repeated name - and the
error mapping. The workflow itself is tested on the local interpreter.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from qldbstream_handlers.fraud import Alert, AlertBus
from qldbstream_handlers.workflow import WorkflowHandler
from qldbstream_handlers.workflow.example import definition

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.aws import client
from tests.support.fakes import MemoryDLQ
from tests.support.servers import MotoServer
from tests.support.streams import kinesis_records, simulation

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/qldbstream-workflow"


@pytest.fixture
def state_machine(moto_server: MotoServer) -> tuple[Any, str]:
    sfn = client("stepfunctions", moto_server.endpoint)
    body = definition("arn:aws:sns:us-east-1:123456789012:security", "compliance")
    arn = sfn.create_state_machine(
        name=f"events-{uuid.uuid4().hex[:8]}", definition=json.dumps(body), roleArn=ROLE
    )["stateMachineArn"]
    return sfn, arn


def executions(sfn: Any, arn: str) -> dict[str, dict[str, Any]]:
    out = {}
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn):
        for e in page["executions"]:
            out[e["name"]] = e
    return out


def remote_handler(endpoint: str, arn: str, bus: AlertBus | None = None) -> WorkflowHandler:
    return WorkflowHandler(
        {"mode": "remote", "state_machine_arn": arn, "alerts": "true" if bus else "false"},
        clients=lambda service: client(service, endpoint),
        bus=bus,
    )


def test_each_revision_starts_one_named_execution_whatever_the_redeliveries(
    moto_server: MotoServer, state_machine: tuple[Any, str]
) -> None:
    sfn, arn = state_machine
    sim = simulation(20, seed=51, duplicates=0.3)
    ((shard, records),) = kinesis_records(sim).items()
    handler = remote_handler(moto_server.endpoint, arn)
    metrics = InMemoryMetrics()
    result = Pipeline([handler], dlq=MemoryDLQ(), store=InMemoryDedupeStore(), metrics=metrics).process(
        shard, records
    )
    assert not result.halted
    names = {f"{r.document_id}-{r.version}" for r in sim.ledger.revisions}
    started = executions(sfn, arn)
    assert set(started) == names
    assert metrics.total("workflow_executions", mode="remote", outcome="started") == len(names)

    some = sorted(names)[0]
    described = handler.starter.describe(some)  # type: ignore[union-attr]
    assert described["name"] == some and described["status"] == "RUNNING"
    event = json.loads(described["input"])
    assert event["eventId"] == some and event["source"] == "qldb"
    document_id, version = some.rsplit("-", 1)
    assert (event["documentId"], event["version"]) == (document_id, int(version))

    # Redelivered while the executions still run: Step Functions answers with the same execution.
    Pipeline([handler], dlq=MemoryDLQ(), store=InMemoryDedupeStore(), metrics=metrics).process(shard, records)
    assert len(executions(sfn, arn)) == len(names)
    # Once an execution has closed, the same name is refused: that means "already started".
    sfn.stop_execution(executionArn=started[some]["executionArn"])
    Pipeline([handler], dlq=MemoryDLQ(), store=InMemoryDedupeStore(), metrics=metrics).process(shard, records)
    assert metrics.total("workflow_executions", outcome="already-started") == 1
    assert len(executions(sfn, arn)) == len(names)


def test_alerts_start_executions_and_a_missing_state_machine_halts_the_shard(
    moto_server: MotoServer, state_machine: tuple[Any, str]
) -> None:
    sfn, arn = state_machine
    bus = AlertBus()
    handler = remote_handler(moto_server.endpoint, arn, bus)
    import logging

    from qldbstream.api.handler import SetupContext

    handler.setup(SetupContext({}, logging.getLogger("test"), InMemoryMetrics()))
    alert = Alert.create(
        "rapid_small_transactions", "AC0000000007", 1.2, [("doc1", 0), ("doc2", 0)], 1_709_283_600_000
    )
    bus.publish(alert)
    execution = executions(sfn, arn)[f"alert-{alert.id}"]
    body = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert body["rule"] == "rapid_small_transactions" and body["evidence"][1] == {
        "documentId": "doc2",
        "version": 0,
    }
    handler.close()

    missing = remote_handler(moto_server.endpoint, arn.replace(":events-", ":missing-"))
    sim = simulation(5, seed=52)
    ((shard, records),) = kinesis_records(sim).items()
    dlq = MemoryDLQ()
    result = Pipeline([missing], dlq=dlq, store=InMemoryDedupeStore()).process(shard, records)
    assert result.halted and "cannot start executions" in result.halt_reason and dlq.letters == []
