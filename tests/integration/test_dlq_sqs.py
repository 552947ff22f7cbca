"""SqsDeadLetterQueue against moto server: standard and FIFO queues, attributes, the size limit,
large envelopes in an S3 bucket behind an extended-client pointer, receive and delete. One fresh
queue (and bucket) per test."""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import asdict, replace
from typing import Any

import pytest

from qldbstream.core.deaggregate import KPL_MAGIC
from qldbstream.core.errors import HaltShardError, PoisonRecordError
from qldbstream.core.records import KinesisRecord, UserRecord
from qldbstream.io.dlq import PAYLOAD_POINTER_CLASS, PAYLOAD_SIZE_ATTRIBUTE, SQS_MAX_BYTES, SqsDeadLetterQueue
from qldbstream.pipeline.dlq import (
    DeadLetter,
    DeadLetterPayloadError,
    DeadLetterTooLargeError,
    DeadLetterWriteError,
    envelope_for,
)
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
    with pytest.raises(DeadLetterTooLargeError, match="over SQS's 262144, and its user record alone") as exc:
        dlq.put(huge)
    assert isinstance(exc.value, HaltShardError)  # the pipeline holds the checkpoint at the record
    assert "QLDBSTREAM_DLQ_PAYLOAD_BUCKET" in str(exc.value)
    assert counts(sqs, url) == (0, 0)


def corrupt_aggregate(size: int) -> bytes:
    """A KPL aggregate of ``size`` bytes whose MD5 does not match: it cannot be deaggregated."""
    body = bytes(random.Random(size).getrandbits(8) for _ in range(size - len(KPL_MAGIC) - 16))
    return KPL_MAGIC + body + b"\x00" * 16


def poison_letter(data: bytes) -> DeadLetter:
    """A Kinesis record that could not be deaggregated: the envelope has no user record."""
    record = KinesisRecord(
        data, "4959", "pk-1", "shardId-000000000001", None, None, STREAM_ARN, "stream ledger"
    )
    return envelope_for("deaggregate", PoisonRecordError("bad MD5"), record)


def test_without_a_bucket_a_large_letter_with_no_user_record_is_refused_not_shortened(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    poison = poison_letter(corrupt_aggregate(200_000))  # ~267 KB of base64: what the issue lost
    assert poison.user_record_data is None
    with pytest.raises(DeadLetterTooLargeError, match="the Kinesis record \\(no user record was read\\)"):
        dlq.put(poison)
    assert counts(sqs, url) == (0, 0)


def sealed(letter: DeadLetter, *fields: str) -> DeadLetter:
    """The letter as masking leaves it: the raw fields moved into ``sealed`` (ciphertext-sized)."""
    boxes = {f: {"alg": "AES-256-GCM", "kid": "k1", "nonce": "n", "ct": getattr(letter, f)} for f in fields}
    return replace(letter, kinesis_data=None, user_record_data=None, sealed=boxes, masked=True)


def test_a_sealed_letter_without_a_bucket_loses_only_its_sealed_kinesis_data(sqs: Any) -> None:
    url = new_queue(sqs)
    dlq = SqsDeadLetterQueue(sqs, url)
    big = sealed(
        letter(kinesis_bytes=b"k" * 200_000, user_bytes=b"u" * 1000), "kinesis_data", "user_record_data"
    )
    dlq.put(big)
    ((_, got),) = list(dlq.receive())
    assert (
        set(got.sealed) == {"user_record_data"}
        and got.sealed["user_record_data"] == big.sealed["user_record_data"]
    )
    poison = sealed(poison_letter(corrupt_aggregate(200_000)), "kinesis_data")
    with pytest.raises(DeadLetterTooLargeError, match="no user record was read"):
        dlq.put(poison)


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    return client("s3", moto_server.endpoint)


def new_bucket(s3: Any) -> str:
    name = f"dlq-payloads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def objects(s3: Any, bucket: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_with_a_bucket_a_large_letter_goes_whole_to_s3_behind_an_extended_client_pointer(
    sqs: Any, s3: Any, fifo: bool
) -> None:
    url, bucket = new_queue(sqs, fifo=fifo), new_bucket(s3)
    dlq = SqsDeadLetterQueue(sqs, url, payload_bucket=bucket, s3=lambda: s3)
    data = corrupt_aggregate(300_000)
    sent = poison_letter(data)
    dlq.put(sent)
    small = letter("5")
    dlq.put(small)  # under the limit: inline, as always
    stored = objects(s3, bucket)
    ((key, payload),) = stored.items()
    assert key == f"qldbstream-dlq/{sent.id}.json"
    assert payload == sent.to_json().encode()  # nothing left out
    raw = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    pointer = next(m for m in raw if m["Body"].startswith("["))
    assert json.loads(pointer["Body"]) == [PAYLOAD_POINTER_CLASS, {"s3BucketName": bucket, "s3Key": key}]
    assert pointer["MessageAttributes"][PAYLOAD_SIZE_ATTRIBUTE] == {
        "DataType": "Number",
        "StringValue": str(len(payload)),
    }
    assert pointer["MessageAttributes"]["stage"]["StringValue"] == "deaggregate"
    for m in raw:  # make them visible again for the DLQ's own reader
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    got = {entry.id: (handle, entry) for handle, entry in dlq.receive()}
    assert asdict(got[sent.id][1]) == asdict(sent) and asdict(got[small.id][1]) == asdict(small)
    assert got[sent.id][1].kinesis_record().data == data  # byte for byte
    dlq.delete(got[small.id][0])
    assert objects(s3, bucket) == stored  # an inline entry's delete leaves the bucket alone
    dlq.delete(got[sent.id][0])
    assert objects(s3, bucket) == {}
    assert counts(sqs, url) == (0, 0)


def test_a_bucket_prefix_is_used_for_the_object_keys(sqs: Any, s3: Any) -> None:
    url, bucket = new_queue(sqs), new_bucket(s3)
    dlq = SqsDeadLetterQueue(sqs, url, payload_bucket=f"{bucket}/ledger-a/dead", s3=lambda: s3)
    sent = poison_letter(corrupt_aggregate(250_000))
    dlq.put(sent)
    assert list(objects(s3, bucket)) == [f"ledger-a/dead/{sent.id}.json"]


def test_a_bucket_that_cannot_be_written_fails_the_write_and_sends_nothing(sqs: Any, s3: Any) -> None:
    url = new_queue(sqs)
    missing = f"no-such-bucket-{uuid.uuid4().hex[:12]}"
    dlq = SqsDeadLetterQueue(sqs, url, payload_bucket=missing, s3=lambda: s3)
    with pytest.raises(DeadLetterWriteError, match=f"could not be written to s3://{missing}/.*NoSuchBucket"):
        dlq.put(poison_letter(corrupt_aggregate(250_000)))
    assert counts(sqs, url) == (0, 0)


def test_a_queue_that_refuses_the_pointer_leaves_no_object_behind(sqs: Any, s3: Any) -> None:
    url, bucket = new_queue(sqs), new_bucket(s3)
    dlq = SqsDeadLetterQueue(sqs, url, payload_bucket=bucket, s3=lambda: s3)
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(DeadLetterWriteError, match="could not be sent to"):
        dlq.put(poison_letter(corrupt_aggregate(250_000)))
    assert objects(s3, bucket) == {}


def test_a_pointer_whose_object_is_gone_is_a_clear_read_error(sqs: Any, s3: Any) -> None:
    url, bucket = new_queue(sqs), new_bucket(s3)
    dlq = SqsDeadLetterQueue(sqs, url, payload_bucket=bucket, s3=lambda: s3)
    dlq.put(poison_letter(corrupt_aggregate(250_000)))
    (key,) = objects(s3, bucket)
    s3.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(DeadLetterPayloadError, match=f"points to s3://{bucket}/{key}, which cannot be read"):
        list(dlq.receive())


def test_a_message_written_by_an_extended_client_library_is_read(sqs: Any, s3: Any) -> None:
    """Interoperability: the Java library's legacy pointer class, written without qldbstream."""
    url, bucket = new_queue(sqs), new_bucket(s3)
    sent = letter("11", user_bytes=b"u" * 300_000)
    s3.put_object(Bucket=bucket, Key="3f1c2a", Body=sent.to_json().encode())
    body = json.dumps(
        ["com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName": bucket, "s3Key": "3f1c2a"}]
    )
    sqs.send_message(QueueUrl=url, MessageBody=body)
    dlq = SqsDeadLetterQueue(sqs, url, s3=lambda: s3)  # reading needs no payload bucket setting
    ((handle, got),) = list(dlq.receive())
    assert asdict(got) == asdict(sent)
    dlq.delete(handle)
    assert objects(s3, bucket) == {} and counts(sqs, url) == (0, 0)


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
