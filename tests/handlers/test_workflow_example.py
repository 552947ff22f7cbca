"""The seed's event-processing workflow end to end on the simulated bank, run by the local
interpreter with the fraud handler feeding it alerts, and SNS, SQS and DynamoDB on moto server.

Every revision ends in exactly one place, predicted from the simulator's ground truth:
high-value payments → the parallel risk assessment + notification, aggregated; accounts frozen or
flagged for review → the compliance check (failing twice, retried) and a DynamoDB item; the fraud
handler's burst alerts → investigation, fraud score > 0.8, block + an SNS message to security;
everything else (small payments included: fraud score 0.3) → standard processing.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
from qldbstream_handlers.fraud import Alert, AlertBus, FraudHandler
from qldbstream_handlers.workflow import WorkflowHandler
from qldbstream_handlers.workflow.example import ComplianceUnavailable, ExampleServices
from qldbstream_handlers.workflow.example.tasks import compliance_rule
from qldbstream_tools.simulate import Simulation, WorkloadMix

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.aws import client
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.servers import MotoServer
from tests.support.streams import batches, kinesis_records, simulation

pytestmark = pytest.mark.integration


class FlakyCompliance:
    """The compliance service: unavailable twice for every event, then it answers."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, event: dict[str, Any]) -> tuple[str, str]:
        self.calls[event["eventId"]] += 1
        if self.calls[event["eventId"]] <= 2:
            raise ComplianceUnavailable("compliance service timed out")
        return compliance_rule(event)


@pytest.fixture
def aws(moto_server: MotoServer) -> dict[str, Any]:
    sns, sqs, dynamodb = (client(s, moto_server.endpoint) for s in ("sns", "sqs", "dynamodb"))
    suffix = uuid.uuid4().hex[:8]
    topic = sns.create_topic(Name=f"security-{suffix}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"security-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )
    table = f"compliance-{suffix}"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "EventId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "EventId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return {
        "endpoint": moto_server.endpoint,
        "topic": topic,
        "queue": queue,
        "table": table,
        "sqs": sqs,
        "dynamodb": dynamodb,
    }


def messages(sqs: Any, queue: str) -> list[str]:
    out = []
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        out.extend(m["Body"] for m in batch)
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    return out


def compliance_items(dynamodb: Any, table: str) -> dict[str, dict[str, Any]]:
    items = dynamodb.scan(TableName=table)["Items"]
    return {i["EventId"]["S"]: {k: v["S"] for k, v in i.items()} for i in items}


def expected_routes(sim: Simulation) -> tuple[set[str], set[str], set[str]]:
    """(all revisions, high-value ones, compliance ones) as event ids, from the ground truth."""
    everything, high, compliance = set(), set(), set()
    for r in sim.ledger.revisions:
        event_id = f"{r.document_id}-{r.version}"
        everything.add(event_id)
        if r.redacted or r.data is None:
            continue
        if r.table == "Transactions" and r.op == "insert" and r.data["amount"] >= 10000:
            high.add(event_id)
        if r.table == "Accounts" and (r.data.get("status") == "FROZEN" or r.data.get("reviewRequired")):
            compliance.add(event_id)
    return everything, high, compliance


def test_the_seed_workflow_on_the_simulated_bank(aws: dict[str, Any]) -> None:
    mix = WorkloadMix(small_burst=4.0, high_value=5.0, account_review=6.0)
    sim = simulation(110, seed=41, duplicates=0.1, mix=mix)
    bus, t, metrics = AlertBus(), FakeTime(1_709_283_600.0), InMemoryMetrics()
    raised: list[Alert] = []
    bus.subscribe(raised.append)
    fraud = FraudHandler({"anomaly": "off", "velocity_max_count": "off"}, bus=bus)
    services = ExampleServices(compliance=FlakyCompliance())
    workflow = WorkflowHandler(
        {"security_alert_topic_arn": aws["topic"], "compliance_table_name": aws["table"]},
        services=services,
        bus=bus,
        clients=lambda service: client(service, aws["endpoint"]),
        sleep=t.sleep,
        clock=t.clock,
    )
    dlq = MemoryDLQ()
    pipeline = Pipeline(
        [fraud, workflow], dlq=dlq, store=InMemoryDedupeStore(), metrics=metrics, clock=t.clock, sleep=t.sleep
    )
    import logging

    from qldbstream.api.handler import SetupContext

    for handler in (fraud, workflow):
        handler.setup(SetupContext({}, logging.getLogger("test"), metrics))
    ((shard, records),) = kinesis_records(sim).items()
    for batch in batches(records, 12):
        result = pipeline.process(shard, batch)
        assert not result.halted, result.halt_reason
    assert dlq.letters == []

    everything, high, compliance = expected_routes(sim)
    assert high and compliance and sim.ledger.bursts  # the workload planted every case

    # high value: both parallel branches ran and their results were aggregated
    assert {n["eventId"] for n in services.notifications} == high
    # compliance: retried twice with the seed's backoff, then recorded in DynamoDB
    items = compliance_items(aws["dynamodb"], aws["table"])
    assert set(items) == compliance
    assert set(services.compliance.calls.values()) == {3}  # type: ignore[attr-defined]
    assert t.slept.count(2) == len(compliance) and t.slept.count(4) == len(compliance)
    frozen = {
        f"{r.document_id}-{r.version}"
        for r in sim.ledger.revisions
        if r.data and r.table == "Accounts" and r.data.get("status") == "FROZEN"
    }
    assert {k for k, v in items.items() if v["ComplianceStatus"] == "REVIEW"} == frozen & compliance
    assert all(v["Timestamp"].endswith("Z") and v["Details"] for v in items.values())
    # suspicious: every burst alert was investigated, scored > 0.8, blocked and sent to security
    bursts = [a for a in raised if a.rule == "rapid_small_transactions"]
    planted = [b for b in sim.ledger.bursts if len(b.document_ids) >= 5]  # the run may end mid-burst
    assert planted and len(bursts) >= len(planted)
    assert set(services.blocked) == {doc for a in bursts for doc, _ in a.evidence}
    assert set(services.blocked) <= {doc for b in sim.ledger.bursts for doc in b.document_ids}
    assert all(b["fraudScore"] > 0.8 for b in services.blocked.values())
    for burst in planted:
        assert len(set(burst.document_ids) & set(services.blocked)) >= 5
    sent = messages(aws["sqs"], aws["queue"])
    assert len(sent) == len(bursts)
    assert sorted(m.split("account ")[1].split(":")[0] for m in sent) == sorted(a.account_id for a in bursts)
    # everything else, small payments included (fraud score 0.3), was processed as standard
    assert set(services.processed) == everything - high - compliance
    assert len(services.processed) == len(set(services.processed))
    assert metrics.total("workflow_executions", outcome="succeeded") == len(everything) + len(bursts)

    # A redelivery of the whole stream (no de-duplication marks): no workflow runs twice.
    replay = Pipeline(
        [workflow], dlq=dlq, store=InMemoryDedupeStore(), metrics=metrics, clock=t.clock, sleep=t.sleep
    )
    for batch in batches(records, 12):
        assert not replay.process(shard, batch).halted
    assert len(services.processed) == len(everything - high - compliance)
    assert len(services.notifications) == len(high)
    assert len(compliance_items(aws["dynamodb"], aws["table"])) == len(compliance)
    assert messages(aws["sqs"], aws["queue"]) == []
    assert metrics.total("workflow_executions", outcome="already-done") >= len(everything)


def test_without_the_fraud_handler_small_payments_are_investigated_by_the_simple_rule(
    aws: dict[str, Any],
) -> None:
    sim = simulation(40, seed=42, mix=WorkloadMix(small_burst=6.0))
    services = ExampleServices()
    workflow = WorkflowHandler(
        {"security_alert_topic_arn": aws["topic"], "compliance_table_name": aws["table"], "alerts": "false"},
        services=services,
        clients=lambda service: client(service, aws["endpoint"]),
        sleep=FakeTime().sleep,
    )
    executions: list[Any] = []
    run = workflow.interpreter.run  # type: ignore[union-attr]
    workflow.interpreter.run = lambda data, name: executions.append(run(data, name=name)) or executions[-1]  # type: ignore[union-attr, method-assign]
    ((shard, records),) = kinesis_records(sim).items()
    Pipeline([workflow], dlq=MemoryDLQ(), store=InMemoryDedupeStore()).process(shard, records)
    small = [e for e in executions if "InvestigateFraud" in e.states_entered()]
    assert small and all(
        e.states_entered()[-3:] == ["InvestigateFraud", "FraudDecision", "StandardProcessing"] for e in small
    )
    assert {e.output["fraudScore"] for e in small} == {0.3}
    assert not services.blocked and messages(aws["sqs"], aws["queue"]) == []
    burst_docs = {d for b in sim.ledger.bursts for d in b.document_ids}
    assert {e.name.rsplit("-", 1)[0] for e in small} == burst_docs
    json.dumps([e.output for e in executions])
