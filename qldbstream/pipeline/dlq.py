"""The dead-letter queue: records that cannot be processed, with everything needed to replay them.

A record goes to the DLQ when it is poison (it cannot be deaggregated, decoded or verified) or
when a handler fails on it with an error that retrying will not fix. Writing the envelope is
part of finishing the record: **if the DLQ write fails, the checkpoint does not move** (the
pipeline halts the shard at that record and the record is delivered again later).

Two implementations: :class:`SqsDeadLetterQueue` (the seed design's queue: 14 days, KMS) and
:class:`DirectoryDeadLetterQueue` (one JSON file per entry, any size, for local use and tests).
``qldbstream replay-dlq`` reads entries back, re-drives them through the handlers (which
de-duplicate, so a replay is idempotent) and deletes each entry only after it succeeded.

**A dead letter never loses the record's bytes.** An envelope too large for an SQS message
(256 KiB) goes to an S3 bucket (``dlq_payload_bucket``) and the message carries a pointer to it -
the SQS Extended Client Library's pointer, ``["software.amazon.payloadoffloading.PayloadS3Pointer",
{"s3BucketName": ..., "s3Key": ...}]`` with the ``ExtendedPayloadSize`` attribute, so that tools
built on that library read the entries too. With no bucket, only the Kinesis record's data may be
left out, and only when the failed user record is in the envelope whole (that is what a replay
re-drives); anything else raises :class:`DeadLetterTooLargeError`, and a failing S3 or SQS write
raises :class:`DeadLetterWriteError`: both are :class:`~qldbstream.core.errors.HaltShardError`, so the
pipeline holds the checkpoint at the record and its shard stops there.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from qldbstream import __version__
from qldbstream.core.errors import HaltShardError, InputError
from qldbstream.core.masking import Sealer, open_envelope
from qldbstream.core.records import KinesisRecord, Position, UserRecord

__all__ = [
    "PAYLOAD_POINTER_CLASS",
    "PAYLOAD_SIZE_ATTRIBUTE",
    "SQS_MAX_BYTES",
    "DeadLetter",
    "DeadLetterPayloadError",
    "DeadLetterQueue",
    "DeadLetterTooLargeError",
    "DeadLetterWriteError",
    "DirectoryDeadLetterQueue",
    "SqsDeadLetterQueue",
    "envelope_for",
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


class DeadLetterWriteError(HaltShardError):
    """A dead letter could not be stored (SQS or S3 refused it or is unreachable): the shard
    stops at its record and the checkpoint does not move past it."""


class DeadLetterTooLargeError(DeadLetterWriteError):
    """A dead letter is too large for an SQS message, no payload bucket is configured, and it
    cannot be made smaller without losing the record's bytes."""


class DeadLetterPayloadError(InputError):
    """A pointer message whose payload object cannot be read (deleted, expired, no access)."""


@dataclass
class DeadLetter:
    """The envelope: the raw record, where it came from, who failed on it and how."""

    stage: str  # deaggregate | decode | verify | handler
    error_type: str
    error_message: str
    source: str
    stream_arn: str | None
    shard_id: str | None
    sequence_number: str | None
    sub_sequence_number: int | None
    partition_key: str | None
    #: the Kinesis record's data (a KPL aggregate when aggregated), base64; may be omitted when
    #: the queue's size limit does not allow it (``user_record_data`` is then enough to replay)
    kinesis_data: str | None
    #: the failed user record's data (one QLDB Ion record), base64
    user_record_data: str | None
    approximate_arrival_timestamp: float | None = None
    handler: str | None = None
    traceback: str | None = None
    attempts: int = 1
    first_failure_time: float = field(default_factory=time.time)
    last_failure_time: float = field(default_factory=time.time)
    document_id: str | None = None
    version: int | None = None
    block_sequence_no: int | None = None
    verification_failures: list[dict[str, Any]] = field(default_factory=list)
    qldbstream_version: str = __version__
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: masking on: the raw fields encrypted (``user_record_data``/``kinesis_data`` are then null)
    sealed: dict[str, dict[str, str]] = field(default_factory=dict)
    #: masking on: the document with its sensitive fields masked, as Ion text, for humans
    masked_data: str | None = None
    masked: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def position(self) -> Position:
        return Position(self.source, self.shard_id, self.sequence_number, self.sub_sequence_number)

    def kinesis_record(self, sealer: Sealer | None = None) -> KinesisRecord:
        """The record to re-drive: the user record alone (already deaggregated) when known.

        A sealed envelope needs the ``sealer`` (the masking DLQ key) to give its bytes back.
        """
        user_record_data, kinesis_data = self.user_record_data, self.kinesis_data
        if self.sealed:
            if sealer is None:
                raise ValueError(f"dead letter {self.id} is sealed: replay needs the masking DLQ key")
            opened = open_envelope(asdict(self), sealer)
            user_record_data, kinesis_data = opened["user_record_data"], opened["kinesis_data"]
        raw = user_record_data or kinesis_data
        if raw is None:
            raise ValueError(f"dead letter {self.id} carries no record data")
        return KinesisRecord(
            base64.b64decode(raw),
            self.sequence_number or "",
            self.partition_key or "",
            self.shard_id,
            self.approximate_arrival_timestamp,
            None,
            self.stream_arn,
            f"dlq {self.id}",
            # the user record alone keeps its position, so it is the same copy as the one that failed
            self.sub_sequence_number if user_record_data else None,
        )


def envelope_for(
    stage: str,
    error: BaseException,
    record: KinesisRecord,
    user: UserRecord | None = None,
    *,
    handler: str | None = None,
    traceback: str | None = None,
    attempts: int = 1,
    first_failure_time: float | None = None,
    document_id: str | None = None,
    version: int | None = None,
    block_sequence_no: int | None = None,
    verification_failures: list[dict[str, Any]] | None = None,
) -> DeadLetter:
    now = time.time()
    message = getattr(error, "message", None) or str(error)
    return DeadLetter(
        stage=stage,
        error_type=type(error).__name__,
        error_message=message,
        source=record.source,
        stream_arn=record.stream_arn,
        shard_id=record.shard_id,
        sequence_number=record.sequence_number or None,
        sub_sequence_number=user.sub_sequence_number if user is not None else None,
        partition_key=(user.partition_key if user is not None else record.partition_key) or None,
        kinesis_data=base64.b64encode(record.data).decode("ascii"),
        user_record_data=base64.b64encode(user.data).decode("ascii") if user is not None else None,
        approximate_arrival_timestamp=record.approximate_arrival_timestamp,
        handler=handler,
        traceback=traceback,
        attempts=attempts,
        first_failure_time=first_failure_time or now,
        last_failure_time=now,
        document_id=document_id,
        version=version,
        block_sequence_no=block_sequence_no,
        verification_failures=verification_failures or [],
    )


class DeadLetterQueue(Protocol):
    def put(self, letter: DeadLetter) -> None:
        """Store ``letter`` durably or raise (the checkpoint then holds)."""
        ...

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        """Entries to replay, each with a handle for :meth:`delete`."""
        ...

    def delete(self, handle: str) -> None: ...


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
