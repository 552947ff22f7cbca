"""A Kinesis event source mapping batch as the Lambda handler reads it, and its partial batch response.

* :func:`by_shard` - the event's records grouped by shard (``eventID`` prefix), each group in event
  order; an entry that cannot be read (bad base64, no ``kinesis`` object) becomes a
  :class:`Malformed` item where it stands, for the handler to dead-letter (stage :data:`EVENT_STAGE`);
* :func:`identifier` - what the response names for the first unfinished record: its (for a KPL
  aggregate, its parent's) sequence number; without one the invocation fails
  (:class:`BatchFailedError`) and Lambda retries the whole batch;
* :func:`response` - ``{"batchItemFailures": [...]}``, with the window's ``state`` under a tumbling
  window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError, HaltShardError, MalformedKinesisRecordError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.lambda_event import records_from_event

if TYPE_CHECKING:
    from qldbstream.runtimes.lambda_windows import TumblingWindow

__all__ = [
    "EVENT_STAGE",
    "BatchFailedError",
    "Item",
    "Malformed",
    "by_shard",
    "describe",
    "identifier",
    "optional_text",
    "response",
]

#: The DLQ stage of a record the Lambda event itself could not deliver readable.
EVENT_STAGE = "event"


class BatchFailedError(HaltShardError):
    """The invocation fails on purpose, so that Lambda retries the batch (nothing is checkpointed)."""


def optional_text(value: Any) -> str | None:
    """``value`` when it is a string, else ``None`` (event fields are not trusted to be typed)."""
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Malformed:
    """An event record that could not be converted: the error (with its position) and the raw entry."""

    error: MalformedKinesisRecordError
    entry: Any

    @property
    def sequence_number(self) -> str | None:
        return self.error.position.sequence_number if self.error.position else None

    def kinesis_record(self) -> KinesisRecord:
        """What the envelope records: the ``data`` text exactly as received (it is not valid base64)."""
        entry = self.entry if isinstance(self.entry, Mapping) else {}
        kinesis = entry.get("kinesis")
        kinesis = kinesis if isinstance(kinesis, Mapping) else {}
        data = kinesis.get("data")
        arrival = kinesis.get("approximateArrivalTimestamp")
        position = self.error.position
        return KinesisRecord(
            data.encode("utf-8", "surrogatepass") if isinstance(data, str) else b"",
            self.sequence_number or "",
            str(kinesis.get("partitionKey") or ""),
            position.shard_id if position else None,
            float(arrival) if isinstance(arrival, int | float) else None,
            None,
            optional_text(entry.get("eventSourceARN")),
            position.source if position else "lambda event",
        )


Item = KinesisRecord | Malformed


def describe(item: Item) -> str:
    """Where the item stands, for messages."""
    return item.position.describe() if isinstance(item, KinesisRecord) else str(item.error)


def by_shard(event: Mapping[str, Any], window: TumblingWindow | None) -> dict[str | None, list[Item]]:
    """The event's records grouped by shard (``eventID`` prefix), each group in event order."""
    entries = event.get("Records")
    if entries is None and window is not None:
        entries = []  # a window's final invocation may carry no records
    if not isinstance(entries, list):
        raise ConfigurationError(
            "qldbstream.runtimes.aws_lambda expects a Kinesis event: it has no 'Records' list"
        )
    groups: dict[str | None, list[Item]] = {}
    current = window.shard_id if window is not None else None
    source = {"Records": entries}
    for entry, converted in zip(entries, records_from_event(source), strict=True):
        origin = entry.get("eventSource") if isinstance(entry, Mapping) else None
        if origin is not None and origin != "aws:kinesis":
            raise ConfigurationError(
                f"the qldbstream Lambda handler reads Kinesis event source mappings, not {origin!r} events"
            )
        item: Item
        if isinstance(converted, KinesisRecord):
            item, shard = converted, converted.shard_id
        else:
            item = Malformed(converted, entry)
            shard = converted.position.shard_id if converted.position else None
        # a record whose eventID names no shard stays with its neighbours (keeps the order)
        current = shard if shard is not None else current
        groups.setdefault(current, []).append(item)
    return groups


def identifier(item: Item) -> str:
    """The ``itemIdentifier`` of the first unfinished record: its sequence number."""
    sequence = item.sequence_number
    if not sequence:
        raise BatchFailedError(
            f"the first unfinished record has no sequence number to report ({describe(item)}); "
            "the invocation fails so that Lambda retries the whole batch"
        )
    return sequence


def response(identifiers: list[str], window: TumblingWindow | None) -> dict[str, Any]:
    """The partial batch response; under a tumbling window it always carries the window's ``state``."""
    out: dict[str, Any] = {"batchItemFailures": [{"itemIdentifier": i} for i in identifiers]}
    if window is not None:
        out["state"] = window.state
    return out
