"""The dead-letter queues: SQS (with an S3 bucket for large envelopes) and a directory.

:class:`SqsDeadLetterQueue` is the seed design's queue (14 days, KMS);
:class:`DirectoryDeadLetterQueue` writes one JSON file per entry, any size, for local use and
tests. Both implement :class:`~qldbstream.pipeline.dlq.DeadLetterQueue` for the envelopes of
:mod:`qldbstream.pipeline.dlq`.

**A dead letter never loses the record's bytes.** An envelope too large for an SQS message
(256 KiB) goes to an S3 bucket (``dlq_payload_bucket``) and the message carries a pointer to it -
the SQS Extended Client Library's pointer, ``["software.amazon.payloadoffloading.PayloadS3Pointer",
{"s3BucketName": ..., "s3Key": ...}]`` with the ``ExtendedPayloadSize`` attribute, so that tools
built on that library read the entries too. With no bucket, only the Kinesis record's data may be
left out, and only when the failed user record is in the envelope whole (that is what a replay
re-drives); anything else raises :class:`~qldbstream.pipeline.dlq.DeadLetterTooLargeError`, and a
failing S3 or SQS write raises :class:`~qldbstream.pipeline.dlq.DeadLetterWriteError`: both halt
the shard at the record, and the checkpoint holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from qldbstream.pipeline.dlq import (
    DeadLetter,
    DeadLetterPayloadError,
    DeadLetterTooLargeError,
    DeadLetterWriteError,
)

__all__ = [
    "DEFAULT_PAYLOAD_PREFIX",
    "PAYLOAD_POINTER_CLASS",
    "PAYLOAD_SIZE_ATTRIBUTE",
    "SQS_MAX_BYTES",
    "DirectoryDeadLetterQueue",
    "SqsDeadLetterQueue",
]

#: An SQS message's size limit (body and attributes), whatever larger limit a queue allows.
SQS_MAX_BYTES = 256 * 1024
#: The SQS Extended Client Library's pointer class, first element of a pointer message's body.
PAYLOAD_POINTER_CLASS = "software.amazon.payloadoffloading.PayloadS3Pointer"
#: Older extended clients' pointer class (read, never written).
_LEGACY_POINTER_CLASS = "com.amazon.sqs.javamessaging.MessageS3Pointer"
#: The message attribute the extended clients set on a pointer message: the payload's size.
PAYLOAD_SIZE_ATTRIBUTE = "ExtendedPayloadSize"
#: Object keys under the bucket when ``dlq_payload_bucket`` names no prefix.
DEFAULT_PAYLOAD_PREFIX = "qldbstream-dlq/"
# A pointer message's handle carries the object, as the extended clients' receipt handles do.
_BUCKET_MARKER, _KEY_MARKER = "-..s3BucketName..-", "-..s3Key..-"


class DirectoryDeadLetterQueue:
    """One JSON file per entry in a directory; writes are atomic (temp file + rename)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def put(self, letter: DeadLetter) -> None:
        name = f"{int(letter.last_failure_time * 1000):015d}-{letter.id}.json"
        tmp = self.path / f".{name}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(letter.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a power loss
        finally:
            os.close(directory)

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        for entry in sorted(self.path.glob("*.json"))[:limit]:
            yield str(entry), DeadLetter.from_json(entry.read_text(encoding="utf-8"))

    def delete(self, handle: str) -> None:
        Path(handle).unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.path.glob("*.json"))


class SqsDeadLetterQueue:
    """An SQS queue (standard or FIFO), with an optional S3 bucket for envelopes over 256 KiB.

    A message body is the JSON envelope. One that would not fit (body and attributes over
    :data:`SQS_MAX_BYTES`) is written whole to ``payload_bucket`` (``BUCKET`` or
    ``BUCKET/PREFIX``) as ``<prefix><letter id>.json``, and the message is the extended client's
    pointer to it. Without a bucket, the Kinesis record's data is left out when the failed user
    record is in the envelope (it alone is replayed); otherwise :meth:`put` raises
    :class:`DeadLetterTooLargeError`. :meth:`delete` removes the message, then its payload object.
    """

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        payload_bucket: str | None = None,
        s3: Callable[[], Any] | None = None,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self.payload_bucket: str | None = None
        self.payload_prefix = DEFAULT_PAYLOAD_PREFIX
        if payload_bucket:
            bucket, _, prefix = payload_bucket.partition("/")
            self.payload_bucket = bucket
            if prefix:
                self.payload_prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._s3_factory = s3
        self._s3: Any = None

    @property
    def payload_client(self) -> Any:
        """The S3 client (built on first use: only pointer messages need it)."""
        if self._s3 is None:
            if self._s3_factory is None:
                raise DeadLetterWriteError("this SQS dead-letter queue has no S3 client for payloads")
            self._s3 = self._s3_factory()
        return self._s3

    def put(self, letter: DeadLetter) -> None:
        attributes = {
            "stage": {"DataType": "String", "StringValue": letter.stage},
            "errorType": {"DataType": "String", "StringValue": letter.error_type},
        }
        if letter.handler:
            attributes["handler"] = {"DataType": "String", "StringValue": letter.handler}
        body = letter.to_json()
        if _message_size(body, attributes) > SQS_MAX_BYTES:
            if self.payload_bucket is not None:
                self._put_pointer(letter, body, attributes)
                return
            body = self._without_kinesis_data(letter, _message_size(body, attributes) - len(body.encode()))
        self._send(letter, body, attributes)

    def _without_kinesis_data(self, letter: DeadLetter, overhead: int) -> str:
        """The envelope without the Kinesis record's data - only when the failed user record is in
        it whole (replay re-drives that) and that makes it fit; else DeadLetterTooLargeError."""
        size = len(letter.to_json().encode()) + overhead
        has_user_record = letter.user_record_data is not None or "user_record_data" in letter.sealed
        if has_user_record:
            sealed = {k: v for k, v in letter.sealed.items() if k != "kinesis_data"}
            body = replace(letter, kinesis_data=None, sealed=sealed).to_json()
            if len(body.encode()) + overhead <= SQS_MAX_BYTES:
                return body
        what = "its user record alone" if has_user_record else "the Kinesis record (no user record was read)"
        raise DeadLetterTooLargeError(
            f"dead letter for {letter.position.describe()} is {size} bytes, over SQS's {SQS_MAX_BYTES}, "
            f"and {what} does not fit either: set dlq_payload_bucket (QLDBSTREAM_DLQ_PAYLOAD_BUCKET) "
            "or use a directory DLQ; the shard stops at this record"
        )

    def _put_pointer(self, letter: DeadLetter, body: str, attributes: dict[str, dict[str, str]]) -> None:
        assert self.payload_bucket is not None
        bucket, key = self.payload_bucket, f"{self.payload_prefix}{letter.id}.json"
        payload = body.encode()
        try:
            self._store_payload(bucket, key, payload)
        except DeadLetterWriteError:
            raise
        except Exception as exc:  # no bucket, no access, S3 down: nowhere to put the bytes
            raise DeadLetterWriteError(
                f"dead letter for {letter.position.describe()} ({len(payload)} bytes) could not be "
                f"written to s3://{bucket}/{key}: {exc}; the shard stops at this record"
            ) from exc
        pointer = json.dumps([PAYLOAD_POINTER_CLASS, {"s3BucketName": bucket, "s3Key": key}])
        attributes = {
            **attributes,
            PAYLOAD_SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(len(payload))},
        }
        try:
            self._send(letter, pointer, attributes)
        except DeadLetterWriteError:
            # the message is what makes the object an entry: do not leave it behind (should this
            # fail too, the bucket's lifecycle rule removes it - docs/operations.md)
            with contextlib.suppress(Exception):
                self._drop_payload(bucket, key)
            raise

    def _send(self, letter: DeadLetter, body: str, attributes: dict[str, dict[str, str]]) -> None:
        extra: dict[str, Any] = {}
        if self.fifo:
            # the same record failing the same way (a redelivered batch) is one entry, not two
            identity = "/".join(
                str(x)
                for x in (
                    letter.stream_arn,
                    letter.shard_id,
                    letter.sequence_number,
                    letter.sub_sequence_number,
                    letter.stage,
                    letter.handler,
                )
            )
            dedup = hashlib.sha256(identity.encode()).hexdigest()
            extra = {"MessageGroupId": letter.shard_id or "qldbstream", "MessageDeduplicationId": dedup}
        try:
            self.client.send_message(
                QueueUrl=self.queue_url, MessageBody=body, MessageAttributes=attributes, **extra
            )
        except Exception as exc:  # the queue is unreachable or refuses it: the checkpoint must hold
            raise DeadLetterWriteError(
                f"dead letter for {letter.position.describe()} could not be sent to {self.queue_url}: "
                f"{exc}; the shard stops at this record"
            ) from exc

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        """Entries, inline or behind a pointer (the payload is read from S3)."""
        response = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(limit, 10)), WaitTimeSeconds=1
        )
        for message in response.get("Messages", []):
            body, handle = message["Body"], message["ReceiptHandle"]
            pointer = _pointer(body)
            if pointer is None:
                yield handle, DeadLetter.from_json(body)
                continue
            bucket, key = pointer
            try:
                payload = self._read_payload(bucket, key)
            except Exception as exc:
                raise DeadLetterPayloadError(
                    f"SQS message {message.get('MessageId')} points to s3://{bucket}/{key}, which cannot "
                    f"be read: {exc}"
                ) from exc
            marked = f"{_BUCKET_MARKER}{bucket}{_BUCKET_MARKER}{_KEY_MARKER}{key}{_KEY_MARKER}{handle}"
            yield marked, DeadLetter.from_json(payload.decode("utf-8"))

    def delete(self, handle: str) -> None:
        """Delete the message, then its payload object (if the second fails, the object is an
        orphan that the bucket's lifecycle rule removes; never the other way round, which would
        leave a message pointing at nothing)."""
        obj: tuple[str, str] | None = None
        if handle.startswith(_BUCKET_MARKER):
            bucket, _, rest = handle[len(_BUCKET_MARKER) :].partition(_BUCKET_MARKER)
            key, _, handle = rest[len(_KEY_MARKER) :].partition(_KEY_MARKER)
            obj = bucket, key
        self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)
        if obj is not None:
            self._drop_payload(*obj)

    # the payload bucket's three calls, each in its own method: the deployment's IAM statement for
    # the bucket (DlqPayloadBucket) is checked against exactly these (tests/deploy)
    def _store_payload(self, bucket: str, key: str, payload: bytes) -> None:
        self.payload_client.put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json")

    def _read_payload(self, bucket: str, key: str) -> bytes:
        body: bytes = self.payload_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def _drop_payload(self, bucket: str, key: str) -> None:
        self.payload_client.delete_object(Bucket=bucket, Key=key)


def _message_size(body: str, attributes: dict[str, dict[str, str]]) -> int:
    """What SQS counts against the limit: the body and every attribute's name, type and value."""
    overhead = sum(
        len(k) + len(v["DataType"]) + len(v["StringValue"].encode()) for k, v in attributes.items()
    )
    return len(body.encode()) + overhead


def _pointer(body: str) -> tuple[str, str] | None:
    """``(bucket, key)`` when ``body`` is an extended client's pointer, else None."""
    if not body.startswith("["):
        return None
    try:
        cls, target = json.loads(body)
        if cls in (PAYLOAD_POINTER_CLASS, _LEGACY_POINTER_CLASS):
            return str(target["s3BucketName"]), str(target["s3Key"])
    except (ValueError, TypeError, KeyError):
        pass
    return None
