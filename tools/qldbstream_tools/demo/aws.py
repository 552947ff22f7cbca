"""The demo's side of the embedded local AWS: dummy credentials, the resources it creates, reads.

Handlers build their own boto3 clients from their settings (region, endpoint URL) and take
credentials from the environment, as they do in production. :func:`local_credentials` gives them
dummy ones for the duration of the demo - and hides any real profile or session token, so nothing
the demo does can be signed for a real account - then puts the environment back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qldbstream_tools.demo.options import DemoNames

__all__ = ["DemoResources", "create_resources", "drain_queue", "local_credentials", "scan_table"]

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_HIDDEN = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@contextlib.contextmanager
def local_credentials() -> Iterator[None]:
    """Dummy credentials (and no profile) in ``os.environ`` and a fresh boto3 default session."""
    import boto3

    saved = {k: os.environ.get(k) for k in (*_CREDENTIALS, *_HIDDEN)}
    session = boto3.DEFAULT_SESSION
    os.environ.update(_CREDENTIALS)
    for key in _HIDDEN:
        os.environ.pop(key, None)
    boto3.DEFAULT_SESSION = None  # a session made earlier may hold other credentials
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        boto3.DEFAULT_SESSION = session


@dataclass(frozen=True)
class DemoResources:
    """What :func:`create_resources` made: URLs and ARNs the settings and the read-back need."""

    alert_queue_url: str
    security_topic_arn: str
    security_queue_url: str


def create_resources(aws: Any, names: DemoNames, shards: int) -> DemoResources:
    """Streams (source, and the replica in the second region), tables, the alert queue, the topic."""
    from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
    from qldbstream.io.clients import aws_client
    from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
    from qldbstream.io.kinesis_writer import create_stream

    create_stream(aws.client("kinesis"), names.stream, shards)
    west = aws_client(
        "kinesis", region_name=names.replica_region, endpoint_url=names.endpoint, max_attempts=3
    )
    create_stream(west, names.replica_stream, max(1, shards // 2))
    dynamodb = aws.client("dynamodb")
    DynamoDBCheckpointStore.create_table(dynamodb, names.checkpoint_table)
    DynamoDBDedupeStore.create_table(dynamodb, names.dedupe_table)
    for table, keys in (
        (names.velocity_table, (("pk", "HASH"), ("sk", "RANGE"))),
        (names.compliance_table, (("EventId", "HASH"),)),
    ):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": k, "KeyType": kind} for k, kind in keys],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
            BillingMode="PAY_PER_REQUEST",
        )
    sqs = aws.client("sqs")
    alerts = sqs.create_queue(
        QueueName=names.alert_queue,
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
    )["QueueUrl"]
    inbox = sqs.create_queue(QueueName=names.security_queue)["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns = aws.client("sns")
    topic = sns.create_topic(Name=names.security_topic)["TopicArn"]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"}
    )
    return DemoResources(alerts, topic, inbox)


def drain_queue(sqs: Any, url: str) -> list[str]:
    """Every message body in the queue (received, then deleted)."""
    out: list[str] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        out.extend(m["Body"] for m in batch)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    return out


def scan_table(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of a (small) table, in DynamoDB's attribute-value form."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = dynamodb.scan(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
