"""The dead-letter queue: records that cannot be processed, with everything needed to replay them.

A record goes to the DLQ when it is poison (it cannot be deaggregated, decoded or verified) or
when a handler fails on it with an error that retrying will not fix. Writing the envelope is
part of finishing the record: **if the DLQ write fails, the checkpoint does not move** (the
pipeline halts the shard at that record and the record is delivered again later).

Two implementations: :class:`SqsDeadLetterQueue` (the seed design's queue: 14 days, KMS) and
:class:`DirectoryDeadLetterQueue` (one JSON file per entry, for local use and tests).
``qldbstream replay-dlq`` reads entries back, re-drives them through the handlers (which
de-duplicate, so a replay is idempotent) and deletes each entry only after it succeeded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from qldbstream import __version__
from qldbstream.masking import Sealer, open_envelope
from qldbstream.records import KinesisRecord, Position, UserRecord

__all__ = [
    "DeadLetter",
    "DeadLetterQueue",
    "DirectoryDeadLetterQueue",
    "SqsDeadLetterQueue",
    "envelope_for",
]

SQS_MAX_BYTES = 256 * 1024


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
    """An SQS queue (standard or FIFO). Bodies are the JSON envelope, at most 256 KiB: when the
    Kinesis record's data would not fit, it is left out (the user record alone is replayable)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")

    def put(self, letter: DeadLetter) -> None:
        attributes = {
            "stage": {"DataType": "String", "StringValue": letter.stage},
            "errorType": {"DataType": "String", "StringValue": letter.error_type},
        }
        if letter.handler:
            attributes["handler"] = {"DataType": "String", "StringValue": letter.handler}
        # SQS counts the body and every attribute's name, type and value against the limit
        overhead = sum(
            len(k) + len(v["DataType"]) + len(v["StringValue"].encode()) for k, v in attributes.items()
        )
        body = letter.to_json()
        if len(body.encode()) + overhead > SQS_MAX_BYTES and letter.kinesis_data is not None:
            body = replace(letter, kinesis_data=None).to_json()
        if len(body.encode()) + overhead > SQS_MAX_BYTES and "kinesis_data" in letter.sealed:
            sealed = {k: v for k, v in letter.sealed.items() if k != "kinesis_data"}
            body = replace(letter, sealed=sealed).to_json()
        if len(body.encode()) + overhead > SQS_MAX_BYTES:
            raise ValueError(
                f"dead letter for {letter.position.describe()} is {len(body.encode())} bytes, over SQS's "
                f"{SQS_MAX_BYTES}: use a directory DLQ for records this large"
            )
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
        self.client.send_message(
            QueueUrl=self.queue_url, MessageBody=body, MessageAttributes=attributes, **extra
        )

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(limit, 10)), WaitTimeSeconds=1
        )
        for message in response.get("Messages", []):
            yield message["ReceiptHandle"], DeadLetter.from_json(message["Body"])

    def delete(self, handle: str) -> None:
        self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)
