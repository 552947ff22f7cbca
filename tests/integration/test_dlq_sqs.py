"""SqsDeadLetterQueue against moto server: standard and FIFO queues, attributes, the size limit,
receive and delete. One fresh queue per test."""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict
from typing import Any

import pytest

from qldbstream.dlq import SQS_MAX_BYTES, DeadLetter, SqsDeadLetterQueue, envelope_for
from qldbstream.errors import PoisonRecordError
from qldbstream.records import KinesisRecord, UserRecord
from tests.support.aws import client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/ledger"


@pytest.fixture
def sqs(moto_server: MotoServer) -> Any:
    return client("sqs", moto_server.endpoint)


def new_queue(sqs: Any, fifo: bool = False, **attributes: str) -> str:
    name = f"dlq-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
    if fifo:
        attributes["FifoQueue"] = "true"
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def letter(
    seq: str = "49590338271490256608559692538361571095921575989136588898",
    *,
    shard: str | None = "shardId-000000000001",
    handler: str | None = "audit",
    kinesis_bytes: bytes = b"\xf3\x89\x9a\xc2kpl-aggregate",
    user_bytes: bytes = b"\xe0\x01\x00\xea-ion",
) -> DeadLetter:
    record = KinesisRecord(
        kinesis_bytes, seq, "pk-1", shard, 1_790_000_000.5, None, STREAM_ARN, "stream ledger"
    )
    user = UserRecord(user_bytes, seq, 2, "pk-1", None, True, record)
    return envelope_for(
        "handler" if handler else "decode", PoisonRecordError("bad"), record, user, handler=handler
    )


def counts(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_standard_queue_round_trip_and_delete(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    assert not dlq.fifo
    sent = letter()
    dlq.put(sent)
    ((handle, got),) = list(dlq.receive())
    assert asdict(got) == asdict(sent)
    assert got.kinesis_record().data == b"\xe0\x01\x00\xea-ion"  # the user record alone
    assert counts(sqs, url) == (0, 1)  # received: invisible until deleted or the timeout passes
    dlq.delete(handle)
    assert counts(sqs, url) == (0, 0)


def test_message_attributes_name_stage_error_and_handler(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    dlq.put(letter(handler="audit"))
    dlq.put(letter("7", handler=None))
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"
    ]
    by_seq = {DeadLetter.from_json(m["Body"]).sequence_number: m["MessageAttributes"] for m in messages}
    assert by_seq["7"] == {
        "stage": {"DataType": "String", "StringValue": "decode"},
        "errorType": {"DataType": "String", "StringValue": "PoisonRecordError"},
    }
    handler_attrs = by_seq["49590338271490256608559692538361571095921575989136588898"]
    assert handler_attrs["handler"] == {"DataType": "String", "StringValue": "audit"}
    assert handler_attrs["stage"]["StringValue"] == "handler"


def test_fifo_queue_groups_by_shard_keeps_order_and_drops_a_repeated_envelope(sqs: Any) -> None:
    url = new_queue(sqs, fifo=True)
    dlq = SqsDeadLetterQueue(sqs, url)
    assert dlq.fifo
    letters = [letter(str(n)) for n in range(1, 6)]
    for sent in letters:
        dlq.put(sent)
    dlq.put(letters[0])  # the same envelope again (same id): FIFO de-duplication drops it
    dlq.put(letter("99", shard=None))
    raw = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"])[
        "Messages"
    ]
    got = [(m["Attributes"]["MessageGroupId"], DeadLetter.from_json(m["Body"]).sequence_number) for m in raw]
    assert [seq for group, seq in got if group == "shardId-000000000001"] == ["1", "2", "3", "4", "5"]
    assert ("qldbstream", "99") in got
    assert len(got) == 6


def test_a_letter_over_256_kib_loses_its_kinesis_data_but_stays_replayable(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    user = b"u" * 60_000
    big = letter(kinesis_bytes=b"k" * 200_000, user_bytes=user)
    assert len(big.to_json().encode()) > SQS_MAX_BYTES
    dlq.put(big)
    ((handle, got),) = list(dlq.receive())
    assert got.kinesis_data is None
    assert got.user_record_data == base64.b64encode(user).decode()
    assert got.kinesis_record().data == user
    dlq.delete(handle)


def test_a_letter_just_under_the_limit_keeps_everything(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    small = letter(kinesis_bytes=b"k" * 100_000, user_bytes=b"u" * 80_000)
    assert len(small.to_json().encode()) < SQS_MAX_BYTES
    dlq.put(small)
    ((_, got),) = list(dlq.receive())
    assert got.kinesis_data == small.kinesis_data and got.user_record_data == small.user_record_data


def test_a_letter_still_too_big_without_kinesis_data_is_refused_and_nothing_is_sent(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    huge = letter(kinesis_bytes=b"k" * 10, user_bytes=b"u" * 200_000)  # base64 makes it ~267 KB
    with pytest.raises(ValueError, match="over SQS's 262144: use a directory DLQ"):
        dlq.put(huge)
    assert counts(sqs, url) == (0, 0)


def test_the_limit_also_holds_on_a_queue_that_takes_1_mib(sqs: Any) -> None:
    url = new_queue(sqs, MaximumMessageSize="1048576")  # SQS's current maximum (and moto's default)
    dlq = SqsDeadLetterQueue(sqs, url)
    dlq.put(letter(kinesis_bytes=b"k" * 200_000, user_bytes=b"u" * 60_000))
    ((_, got),) = list(dlq.receive())
    assert got.kinesis_data is None  # the DLQ keeps to 256 KiB whatever the queue allows


def test_receive_returns_at_most_ten_and_at_most_the_limit(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    for n in range(12):
        dlq.put(letter(str(n)))
    first = list(dlq.receive(limit=3))
    assert 1 <= len(first) <= 3
    rest = list(dlq.receive(limit=50))
    assert 1 <= len(rest) <= 10
    for handle, _ in first + rest:
        dlq.delete(handle)
    assert counts(sqs, url) == (12 - len(first) - len(rest), 0)


def test_receive_from_an_empty_queue_yields_nothing(sqs: Any) -> None:
    dlq = SqsDeadLetterQueue(sqs, new_queue(sqs))
    assert list(dlq.receive()) == []
