"""The fraud handler's AWS edges against the session's moto server: SQS and SNS alert sinks and the
DynamoDB state store - built from the handler's own settings, as a deployment configures them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from qldbstream_handlers.fraud import Alert, DynamoDBStateStore, FraudHandler

from tests.handlers.test_fraud import (
    SETTINGS,
    Collector,
    bank,
    interleaved,
    run_pipeline,
    signature,
)
from tests.support.aws import REGION, client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

QUIET = {**SETTINGS, "anomaly": "off"}


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """Credentials for clients the handler builds itself from ``endpoint_url`` and ``region``."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield moto_server


def endpoint_settings(server: MotoServer, **extra: str) -> dict[str, str]:
    return {**QUIET, "endpoint_url": server.endpoint, "region": REGION, **extra}


def drain_queue(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return messages
        messages.extend(got)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )


def test_sqs_fifo_sink_deduplicates_alerts_raised_again(aws: MotoServer) -> None:
    sqs = client("sqs", aws.endpoint)
    url = sqs.create_queue(QueueName=f"alerts-{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    settings = endpoint_settings(aws, sinks=f"sqs:{url},bus")
    first = Collector()
    run_pipeline(FraudHandler(settings, bus=first.bus), interleaved(bank(), 50))
    # a worker that lost its state raises every alert again: the same ids, so SQS drops them
    again = Collector()
    run_pipeline(FraudHandler(settings, bus=again.bus), interleaved(bank(), 50))
    assert signature(again.alerts) == signature(first.alerts)
    messages = drain_queue(sqs, url)
    alerts = [Alert.from_json(m["Body"]) for m in messages]
    assert len(alerts) == len(first.alerts)
    assert signature(alerts) == signature(first.alerts)
    for message, alert in zip(messages, alerts, strict=True):
        assert message["MessageAttributes"]["alertId"]["StringValue"] == alert.id
        assert message["Attributes"]["MessageGroupId"] == alert.account_id
        assert message["Attributes"]["MessageDeduplicationId"] == alert.id


def test_sns_topic_delivers_alerts_with_their_id(aws: MotoServer) -> None:
    sns, sqs = client("sns", aws.endpoint), client("sqs", aws.endpoint)
    topic = sns.create_topic(Name=f"fraud-{uuid.uuid4().hex[:8]}")["TopicArn"]
    url = sqs.create_queue(QueueName=f"case-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )
    collector = Collector()
    run_pipeline(
        FraudHandler(endpoint_settings(aws, sinks=f"sns:{topic},bus"), bus=collector.bus),
        interleaved(bank(), 50),
    )
    messages = drain_queue(sqs, url)
    alerts = [Alert.from_json(m["Body"]) for m in messages]
    assert signature(alerts) == signature(collector.alerts)
    assert {m["MessageAttributes"]["alertId"]["StringValue"] for m in messages} == {a.id for a in alerts}


def test_dynamodb_state_survives_a_restart(aws: MotoServer) -> None:
    table = f"fraud-state-{uuid.uuid4().hex[:8]}"
    DynamoDBStateStore.create_table(client("dynamodb", aws.endpoint), table)
    settings = endpoint_settings(aws, state_store=f"dynamodb:{table}")
    reference = Collector()
    run_pipeline(FraudHandler(QUIET, bus=reference.bus), interleaved(bank(shards=2), 25))
    work = interleaved(bank(shards=2), 25)
    half = len(work) // 2
    first, second = Collector(), Collector()
    run_pipeline(FraudHandler(settings, bus=first.bus), work[:half], drain=False)
    run_pipeline(FraudHandler(settings, bus=second.bus), work[half - 3 :])  # redelivery overlaps
    assert first.alerts and second.alerts
    assert not {a.id for a in first.alerts} & {a.id for a in second.alerts}
    assert signature(first.alerts + second.alerts) == signature(reference.alerts)
    items = client("dynamodb", aws.endpoint).scan(TableName=table)["Items"]
    meta = next(i for i in items if i["pk"]["S"] == "fraud#meta")
    assert json.loads(meta["body"]["S"])["pending"] == {}  # drained: nothing left waiting
    assert all("ttl" in i and int(i["rev"]["N"]) >= 1 for i in items)


def test_dynamodb_store_writes_are_conditional(aws: MotoServer) -> None:
    dynamodb = client("dynamodb", aws.endpoint)
    table = f"fraud-state-{uuid.uuid4().hex[:8]}"
    DynamoDBStateStore.create_table(dynamodb, table)
    store = DynamoDBStateStore(dynamodb, table, ttl_seconds=None)
    assert store.put("k", "{}", 0) == 1
    assert store.put("k", '{"a":1}', 0) is None  # someone else created it first
    assert store.put("k", '{"a":1}', 1) == 2
    assert store.put("k", '{"a":2}', 1) is None  # stale revision
    big = json.dumps({"x": "y" * 100_000})
    assert store.put("big", big, 0) == 1
    assert store.get(["k", "big", "missing"]) == {"k": (2, '{"a":1}'), "big": (1, big)}
