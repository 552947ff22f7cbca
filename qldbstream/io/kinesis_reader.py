"""Read a live Kinesis data stream: every shard, each parent before its children.

:func:`read_stream` polls ``GetRecords`` over an injected boto3 Kinesis client and yields
:class:`~qldbstream.core.records.KinesisRecord` objects. Records of one shard come in sequence-number order,
and a child shard is read only after *all* its parents (``ParentShardId`` and ``AdjacentParentShardId``)
have been read to their end, so the order of one partition key survives resharding. Shards are found
through ``ListShards`` and through the ``ChildShards`` a parent returns at its end.

The clock and ``sleep`` are injected (tests never really sleep), and so is the random source of the
backoff jitter. Throttling is retried here (:func:`call_throttled`); everything that is not a Kinesis
transient surfaces as the exception that says what happens next:

* the stream does not exist → :class:`~qldbstream.core.errors.InputError` (the CLI exits with code 2);
* still throttled after ``max_attempts`` → :class:`~qldbstream.core.errors.RetryableError`;
* an expired shard iterator is renewed after the last record read, transparently.

The shard graph, the cursors, the Kinesis calls and the quirks of the local stand-ins (moto never
reports the end of a closed shard; its sequence numbers are small integers) live in
:mod:`qldbstream.io.shards`, shared with the standalone worker (:mod:`qldbstream.runtimes.worker`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeVar

from botocore.exceptions import ClientError

from qldbstream.core.errors import RetryableError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.aws_errors import KINESIS_THROTTLING_CODES, error_code
from qldbstream.pipeline.reliability import RetryPolicy, retry

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

    from qldbstream.io.shards import Shard, StreamShards

__all__ = [
    "LATEST",
    "MIN_POLL_SPACING",
    "SHARD_SYNC_INTERVAL",
    "TRIM_HORIZON",
    "ShardProgress",
    "StartPosition",
    "call_throttled",
    "kinesis_retry",
    "read_stream",
]

_T = TypeVar("_T")

#: Kinesis allows 5 GetRecords calls per second per shard: never poll one shard more often.
MIN_POLL_SPACING = 0.2
#: While tailing (``until_caught_up=False``), re-list the shards this often (seconds).
SHARD_SYNC_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where each shard is first read from (``ShardIteratorType``).

    ``LATEST`` applies to the shards that are open when reading starts; shards created later (children
    of a reshard) are read from their beginning, and shards already closed are skipped.
    """

    kind: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if (self.kind == "AT_TIMESTAMP") != (self.timestamp is not None):
            raise ValueError("a timestamp goes with AT_TIMESTAMP, and only with it")
        if self.timestamp is not None and self.timestamp.tzinfo is None:
            raise ValueError("AT_TIMESTAMP needs a timezone-aware datetime")

    @classmethod
    def at_timestamp(cls, timestamp: datetime) -> StartPosition:
        """Start at the first record that arrived at or after ``timestamp`` (timezone-aware)."""
        return cls("AT_TIMESTAMP", timestamp)


TRIM_HORIZON = StartPosition("TRIM_HORIZON")
LATEST = StartPosition("LATEST")


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """Where reading one shard stands, reported after every ``GetRecords`` call on it."""

    shard_id: str
    #: The last sequence number read from the shard (``None`` before the first record).
    sequence_number: str | None
    #: As the last ``GetRecords`` reported it; 0 means the shard's tip was reached.
    millis_behind_latest: int | None
    records_read: int
    #: The shard is done: closed and read to its end, or past ``end_time``.
    finished: bool

    @classmethod
    def of(cls, shard: Shard) -> ShardProgress:
        seq, behind = shard.last_sequence_number, shard.millis_behind_latest
        return cls(shard.shard_id, seq, behind, shard.records_read, shard.finished)


def kinesis_retry(max_attempts: int = 8, rng: random.Random | None = None) -> RetryPolicy:
    """The retry policy of throttled Kinesis calls: ``max_attempts`` attempts, waits from 0.1 s
    doubling up to 5 s, with (equal) jitter from ``rng``."""
    return RetryPolicy(max_attempts, 0.1, 5.0, 2.0, rng or random.Random())


def call_throttled(
    what: str, operation: Callable[[], _T], policy: RetryPolicy, sleep: Callable[[float], None]
) -> _T:
    """Run ``operation``, retrying it while Kinesis answers with a throttling error code.

    When ``policy``'s attempts run out it raises :class:`~qldbstream.core.errors.RetryableError`,
    whose ``retry_after`` is the policy's longest wait: the caller decides whether to try again later.
    """

    def give_up(exc: Exception, attempts: int) -> RetryableError:
        return RetryableError(
            f"{what}: still throttled after {attempts} attempts ({error_code(exc)})",
            retry_after=policy.max_delay,
        )

    return retry(operation, policy, retryable=_throttled, sleep=sleep, give_up=give_up)


def _throttled(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in KINESIS_THROTTLING_CODES


def read_stream(
    client: KinesisClient,
    stream_name: str,
    *,
    start: StartPosition = TRIM_HORIZON,
    until_caught_up: bool = True,
    end_time: datetime | None = None,
    limit: int = 10_000,
    poll_interval: float = 1.0,
    on_shard_progress: Callable[[ShardProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    max_attempts: int = 8,
) -> Generator[KinesisRecord, None, None]:
    """Yield the records of every shard of ``stream_name``, parents before children.

    * ``until_caught_up`` - stop once every open shard has returned an empty batch at
      ``MillisBehindLatest`` 0 and every closed shard is read to its end. Otherwise keep tailing the
      stream until the caller closes the generator (or every shard is finished).
    * ``end_time`` (timezone-aware) - a shard stops at its first record that arrived at or after it
      (that record is not yielded); its children are then not read at all. While tailing, an open
      shard also stops once it is at its tip and ``clock()`` has passed ``end_time``.
    * ``limit`` - ``GetRecords`` batch size (at most 10,000).
    * ``poll_interval`` - seconds between polls of a shard that has nothing new; a shard with a
      backlog is polled every ``min(poll_interval, 0.2)`` seconds.
    * ``on_shard_progress`` - called after every ``GetRecords`` call with that shard's
      :class:`ShardProgress` (progress displays, lag metrics).
    * ``sleep`` / ``clock`` (epoch seconds) / ``rng`` / ``max_attempts`` - injected time, jitter and
      the throttling retry budget (see :func:`kinesis_retry`). A fake ``sleep`` must advance the fake clock.

    Raises :class:`~qldbstream.core.errors.InputError` when the stream does not exist and
    :class:`~qldbstream.core.errors.RetryableError` when Kinesis keeps throttling; other ``ClientError``
    exceptions propagate unchanged.
    """
    if end_time is not None and end_time.tzinfo is None:
        raise ValueError("end_time must be a timezone-aware datetime")
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be between 1 and 10,000")
    from qldbstream.io.shards import StreamShards

    report = on_shard_progress
    shards = StreamShards(
        client,
        stream_name,
        start,
        None if end_time is None else end_time.timestamp(),
        clock,
        kinesis_retry(max_attempts, rng),
        sleep,
        on_descendant_finished=None if report is None else (lambda shard: report(ShardProgress.of(shard))),
    )
    shards.describe()  # fail here, not at the first next(), if the stream is missing
    return _records(shards, until_caught_up, limit, poll_interval, report)


def _records(
    shards: StreamShards,
    until_caught_up: bool,
    limit: int,
    poll_interval: float,
    report: Callable[[ShardProgress], None] | None,
) -> Generator[KinesisRecord, None, None]:
    """The reader's loop: poll the ready shard due first; a shard is finished once it is exhausted."""
    spacing = min(poll_interval, MIN_POLL_SPACING)
    shards.sync(initial=True)
    graph = shards.shards
    while True:
        if all(s.finished for s in graph.values()):
            return
        if until_caught_up and all(s.finished or s.caught_up for s in graph.values()):
            if not shards.sync():  # nothing new since: caught up
                return
            continue
        if not until_caught_up and shards.clock() >= shards.next_sync_at:
            shards.sync()
        shard = min(shards.ready(), key=lambda s: s.next_poll_at)
        wait = shard.next_poll_at - shards.clock()
        if wait > 0:
            shards.sleep(min(wait, poll_interval))
            continue
        fetch = shards.fetch(shard, limit)
        if shard.exhausted:
            shards.finish(shard)
        shard.next_poll_at = shards.clock() + (poll_interval if shard.caught_up else spacing)
        if report is not None:
            report(ShardProgress.of(shard))
        yield from fetch.records
