"""The exception hierarchy: one root, and each class says what the runtime does next.

================================  =====================================================
class                             what happens next
================================  =====================================================
:class:`PoisonRecordError`        the record can never be processed: dead-letter it
:class:`RetryableError`           try again (backoff, bounded by the deadline)
:class:`HaltShardError`           stop the shard at this record; do not checkpoint past it
:class:`ConfigurationError`       refuse to start
:class:`InputError`               the input as a whole cannot be read (CLI exit code 2)
================================  =====================================================

Record-level errors carry the :class:`~qldbstream.core.records.Position` of the record so that a
report, a log line or a dead-letter envelope can name exactly which record failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from qldbstream.core.records import Position

__all__ = [
    "ConfigurationError",
    "DeaggregationError",
    "DecodeError",
    "HaltShardError",
    "InputError",
    "IonHashError",
    "MalformedIonError",
    "MalformedKinesisRecordError",
    "MalformedRecordError",
    "PoisonRecordError",
    "QldbStreamError",
    "RetryableError",
    "UnknownRecordTypeError",
]


class QldbStreamError(Exception):
    """Root of every error qldbstream raises on purpose."""

    #: The runtime action this error maps to: ``dead-letter``, ``retry``, ``halt``,
    #: ``fail-start`` or ``abort-input``.
    action: ClassVar[str] = "halt"


class PoisonRecordError(QldbStreamError):
    """A record that can never be processed successfully. It goes to the dead-letter queue."""

    action = "dead-letter"

    def __init__(self, message: str, position: Position | None = None) -> None:
        self.message = message
        self.position = position
        super().__init__(message if position is None else f"{message} (at {position.describe()})")

    def with_position(self, position: Position) -> PoisonRecordError:
        """Return the same error, attached to ``position`` (used by stages that only see bytes)."""
        self.position = position
        self.args = (f"{self.message} (at {position.describe()})",)
        return self


class MalformedKinesisRecordError(PoisonRecordError):
    """A Kinesis record envelope that cannot be read (no data, invalid base64, no sequence number)."""


class DeaggregationError(PoisonRecordError):
    """A Kinesis record carries the KPL magic but is not a valid aggregate (bad MD5, bad protobuf)."""


class DecodeError(PoisonRecordError):
    """A user record is not a valid QLDB journal stream record."""


class MalformedIonError(DecodeError):
    """The bytes are not valid Ion (truncated, bad type descriptor, unknown symbol)."""


class UnknownRecordTypeError(DecodeError):
    """The Ion is fine, but ``recordType`` is not CONTROL, BLOCK_SUMMARY or REVISION_DETAILS."""


class MalformedRecordError(DecodeError):
    """A QLDB record with a missing field, a field of the wrong Ion type, or a hash of the wrong length."""


class IonHashError(MalformedIonError):
    """A value cannot be Ion-hashed (for example a symbol whose text is unknown)."""


class RetryableError(QldbStreamError):
    """A transient failure (throttling, a sink briefly down). Retry with backoff."""

    action = "retry"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HaltShardError(QldbStreamError):
    """Stop processing this shard at the current record; the checkpoint must not move past it."""

    action = "halt"


class ConfigurationError(QldbStreamError):
    """Invalid configuration, an unknown plugin or a bad value: refuse to start."""

    action = "fail-start"


class InputError(QldbStreamError):
    """An input that cannot be read at all (missing file, unknown format, broken JSON)."""

    action = "abort-input"
