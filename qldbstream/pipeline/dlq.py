"""The dead-letter queue's policy: the envelope, the queue port and what a failed write means.

A record goes to the DLQ when it is poison (it cannot be deaggregated, decoded or verified) or
when a handler fails on it with an error that retrying will not fix. Writing the envelope is
part of finishing the record: **if the DLQ write fails, the checkpoint does not move** (the
pipeline halts the shard at that record and the record is delivered again later).

Here: :class:`DeadLetter` (the envelope, everything needed to replay the record),
:func:`envelope_for`, the :class:`DeadLetterQueue` port, and the errors a queue raises -
:class:`DeadLetterWriteError` and :class:`DeadLetterTooLargeError` are
:class:`~qldbstream.core.errors.HaltShardError`, so the pipeline holds the checkpoint at the record
and its shard stops there. The queues themselves (SQS with S3 payload offload, a directory) are
edges: :mod:`qldbstream.io.dlq`. ``qldbstream replay-dlq`` reads entries back, re-drives them
through the handlers (which de-duplicate, so a replay is idempotent) and deletes each entry only
after it succeeded.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import qldbstream
from qldbstream.core.errors import HaltShardError, InputError
from qldbstream.core.masking_dlq import Sealer, open_envelope
from qldbstream.core.records import KinesisRecord, Position, UserRecord

__all__ = [
    "DeadLetter",
    "DeadLetterPayloadError",
    "DeadLetterQueue",
    "DeadLetterTooLargeError",
    "DeadLetterWriteError",
    "envelope_for",
]


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
    #: looked up when the first dead letter is written, not at import (Lambda cold start)
    qldbstream_version: str = field(default_factory=lambda: str(qldbstream.__version__))
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
    now: float | None = None,
) -> DeadLetter:
    """The envelope of ``record`` (and of ``user``, the user record that failed, when known).

    ``now`` (epoch seconds) is the failure's time: the pipeline passes its injected wall clock;
    without it, the system clock's.
    """
    now = time.time() if now is None else now
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
