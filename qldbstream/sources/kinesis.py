"""Read a live Kinesis data stream: every shard, each parent before its children.

:func:`read_stream` polls ``GetRecords`` over an injected boto3 Kinesis client and yields
:class:`~qldbstream.records.KinesisRecord` objects. Records of one shard come in sequence-number order,
and a child shard is read only after *all* its parents (``ParentShardId`` and ``AdjacentParentShardId``)
have been read to their end, so the order of one partition key survives resharding. Shards are found
through ``ListShards`` and through the ``ChildShards`` a parent returns at its end.

The clock and ``sleep`` are injected (tests never really sleep), and so is the random source of the
backoff jitter. Throttling is retried here with :class:`Backoff`; everything that is not a Kinesis
transient surfaces as the exception that says what happens next:

* the stream does not exist → :class:`~qldbstream.errors.InputError` (the CLI exits with code 2);
* still throttled after ``max_attempts`` → :class:`~qldbstream.errors.RetryableError`;
* an expired shard iterator is renewed after the last record read, transparently.

Local stand-ins differ from Kinesis in ways this module copes with on purpose: moto never reports the
end of a closed shard, so a shard that ``ListShards`` reports closed also ends once a record at or after
its ``EndingSequenceNumber`` has been read, or once it returns an empty batch at ``MillisBehindLatest``
0. Sequence numbers are compared as integers (moto uses ``"1"``, ``"10"``), and an
``EndingSequenceNumber`` below the shard's ``StartingSequenceNumber`` (kinesis-local reports
``9223372036854775807`` for every closed shard) is ignored.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar

from botocore.exceptions import ClientError

from qldbstream.errors import InputError, RetryableError
from qldbstream.records import KinesisRecord

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import (
        GetRecordsOutputTypeDef,
        GetShardIteratorInputTypeDef,
        ShardTypeDef,
    )

__all__ = [
    "LATEST",
    "THROTTLING_ERROR_CODES",
    "TRIM_HORIZON",
    "Backoff",
    "ShardProgress",
    "StartPosition",
    "error_code",
    "read_stream",
]

_T = TypeVar("_T")

#: Error codes that mean "slow down and call again".
THROTTLING_ERROR_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}
)
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


@dataclass(frozen=True)
class Backoff:
    """Retry policy for throttled Kinesis calls: exponential backoff with (equal) jitter.

    Attempt ``n`` (0-based) that fails waits between half and all of ``min(cap, base * 2**n)`` seconds.
    After ``max_attempts`` attempts the call raises :class:`~qldbstream.errors.RetryableError`, whose
    ``retry_after`` is ``cap``: the caller decides whether to try again later.
    """

    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    max_attempts: int = 8
    base: float = 0.1
    cap: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        ceiling = min(self.cap, self.base * 2.0**attempt)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def call(self, what: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation``, retrying it while Kinesis answers with a throttling error code."""
        for attempt in range(self.max_attempts):
            try:
                return operation()
            except ClientError as exc:
                code = error_code(exc)
                if code not in THROTTLING_ERROR_CODES:
                    raise
                if attempt + 1 == self.max_attempts:
                    raise RetryableError(
                        f"{what}: still throttled after {self.max_attempts} attempts ({code})",
                        retry_after=self.cap,
                    ) from exc
                self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


def error_code(exc: ClientError) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` when the response has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


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
      the throttling retry budget (see :class:`Backoff`). A fake ``sleep`` must advance the fake clock.

    Raises :class:`~qldbstream.errors.InputError` when the stream does not exist and
    :class:`~qldbstream.errors.RetryableError` when Kinesis keeps throttling; other ``ClientError``
    exceptions propagate unchanged.
    """
    if end_time is not None and end_time.tzinfo is None:
        raise ValueError("end_time must be a timezone-aware datetime")
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be between 1 and 10,000")
    reader = _StreamReader(
        client,
        stream_name,
        start,
        until_caught_up,
        None if end_time is None else end_time.timestamp(),
        limit,
        poll_interval,
        on_shard_progress,
        clock,
        Backoff(sleep=sleep, rng=rng or random.Random(), max_attempts=max_attempts),
    )
    reader.stream_arn = reader.describe()  # fail here, not at the first next(), if the stream is missing
    return reader.records()


@dataclass(slots=True)
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool = False
    #: From ``ListShards``, only when it is a usable bound (see the module docstring).
    ending_sequence_number: int | None = None
    #: Found after reading started: read from TRIM_HORIZON when the start is LATEST.
    discovered_later: bool = False
    iterator: str | None = None
    last_sequence_number: str | None = None
    records_read: int = 0
    millis_behind_latest: int | None = None
    caught_up: bool = False
    finished: bool = False
    past_end_time: bool = False
    next_poll_at: float = 0.0
    expired_iterators: int = 0

    def progress(self) -> ShardProgress:
        seq, behind = self.last_sequence_number, self.millis_behind_latest
        return ShardProgress(self.shard_id, seq, behind, self.records_read, self.finished)


@dataclass(eq=False)
class _StreamReader:
    """The state of one :func:`read_stream` call: the shard graph and one cursor per shard."""

    client: KinesisClient
    stream_name: str
    start: StartPosition
    until_caught_up: bool
    end_time: float | None  # epoch seconds
    limit: int
    poll_interval: float
    report: Callable[[ShardProgress], None] | None
    clock: Callable[[], float]
    backoff: Backoff
    shards: dict[str, _Shard] = field(default_factory=dict)
    stream_arn: str | None = None
    next_sync_at: float = 0.0

    @property
    def spacing(self) -> float:
        return min(self.poll_interval, MIN_POLL_SPACING)

    # -- the loop -------------------------------------------------------------------------------

    def records(self) -> Generator[KinesisRecord, None, None]:
        self._sync_shards(initial=True)
        while True:
            if all(s.finished for s in self.shards.values()):
                return
            if self.until_caught_up and all(s.finished or s.caught_up for s in self.shards.values()):
                if not self._sync_shards():  # nothing new since: caught up
                    return
                continue
            if not self.until_caught_up and self.clock() >= self.next_sync_at:
                self._sync_shards()
            ready = [s for s in self.shards.values() if not s.finished and self._parents_done(s)]
            shard = min(ready, key=lambda s: s.next_poll_at)
            wait = shard.next_poll_at - self.clock()
            if wait > 0:
                self.backoff.sleep(min(wait, self.poll_interval))
                continue
            yield from self._poll(shard)

    def _parents_done(self, shard: _Shard) -> bool:
        return all(p not in self.shards or self.shards[p].finished for p in shard.parents)

    def _poll(self, shard: _Shard) -> list[KinesisRecord]:
        """One ``GetRecords`` call on ``shard``: update its cursor and return the records to yield."""
        response = self._get_records(shard)
        if response is None:  # the shard disappeared (trimmed past retention) while being read
            self._report(shard)
            return []
        batch = response.get("Records", [])
        behind = response.get("MillisBehindLatest")
        shard.millis_behind_latest = behind
        now = self.clock()
        out: list[KinesisRecord] = []
        for raw in batch:
            arrival = raw.get("ApproximateArrivalTimestamp")
            arrived = None if arrival is None else arrival.timestamp()
            if self.end_time is not None and arrived is not None and arrived >= self.end_time:
                shard.finished = shard.past_end_time = True
                break
            out.append(
                KinesisRecord(
                    data=raw["Data"],
                    sequence_number=raw["SequenceNumber"],
                    partition_key=raw.get("PartitionKey", ""),
                    shard_id=shard.shard_id,
                    approximate_arrival_timestamp=arrived,
                    explicit_hash_key=None,
                    stream_arn=self.stream_arn,
                    source=f"stream {self.stream_name}",
                )
            )
        if out:
            shard.last_sequence_number = out[-1].sequence_number
            shard.records_read += len(out)
        shard.caught_up = not batch and behind == 0
        shard.iterator = response.get("NextShardIterator")
        if shard.iterator is None:  # shard end: Kinesis names the children
            shard.finished = True
            self._add_children(shard, response)
        elif shard.closed and (shard.caught_up or self._read_past_end(shard)):
            shard.finished = True  # moto never reports shard end
        elif shard.caught_up and self.end_time is not None and now >= self.end_time:
            shard.finished = True  # tailing, at the tip, and the window is over
        shard.next_poll_at = now + (self.poll_interval if shard.caught_up else self.spacing)
        if shard.past_end_time:
            self._finish_descendants(shard.shard_id)
        self._report(shard)
        return out

    def _read_past_end(self, shard: _Shard) -> bool:
        last, end = shard.last_sequence_number, shard.ending_sequence_number
        return last is not None and end is not None and int(last) >= end

    def _report(self, shard: _Shard) -> None:
        if self.report is not None:
            self.report(shard.progress())

    # -- Kinesis calls --------------------------------------------------------------------------

    def _get_records(self, shard: _Shard) -> GetRecordsOutputTypeDef | None:
        """``GetRecords`` with throttling retried and an expired iterator renewed; None if trimmed."""
        while True:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
                if shard.iterator is None:
                    return None
            iterator = shard.iterator
            try:
                response = self._call(
                    f"GetRecords on {shard.shard_id}",
                    partial(self.client.get_records, ShardIterator=iterator, Limit=self.limit),
                )
            except _ShardGone:
                shard.finished = True
                return None
            except ClientError as exc:
                if error_code(exc) != "ExpiredIteratorException":
                    raise
                shard.expired_iterators += 1
                if shard.expired_iterators > self.backoff.max_attempts:
                    raise RetryableError(
                        f"stream {self.stream_name}: the iterator of {shard.shard_id} expired "
                        f"{shard.expired_iterators} times in a row"
                    ) from exc
                shard.iterator = None  # renewed after the last record read, on the next turn
                continue
            shard.expired_iterators = 0
            return response

    def _iterator(self, shard: _Shard) -> str | None:
        """A new iterator after the last record read, or at the start position. ``None`` if trimmed."""
        request: GetShardIteratorInputTypeDef = {
            "StreamName": self.stream_name,
            "ShardId": shard.shard_id,
            "ShardIteratorType": "TRIM_HORIZON",
        }
        if shard.last_sequence_number is not None:
            request["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            request["StartingSequenceNumber"] = shard.last_sequence_number
        elif self.start.timestamp is not None:
            request["ShardIteratorType"] = "AT_TIMESTAMP"
            request["Timestamp"] = self.start.timestamp
        elif self.start.kind == "LATEST" and not shard.discovered_later:
            request["ShardIteratorType"] = "LATEST"
        try:
            response = self._call(
                f"GetShardIterator on {shard.shard_id}", partial(self.client.get_shard_iterator, **request)
            )
        except _ShardGone:
            shard.finished = True
            return None
        return response["ShardIterator"]

    def describe(self) -> str:
        summary = self._call(
            "DescribeStreamSummary",
            lambda: self.client.describe_stream_summary(StreamName=self.stream_name),
            stream_level=True,
        )
        return summary["StreamDescriptionSummary"]["StreamARN"]

    def _list_shards(self) -> list[ShardTypeDef]:
        """Every shard, all pages. ``NextToken`` goes alone (Kinesis rejects it with a stream name)."""
        what = "ListShards"
        page = self._call(what, lambda: self.client.list_shards(StreamName=self.stream_name), True)
        shards = list(page["Shards"])
        while token := page.get("NextToken"):
            page = self._call(what, lambda: self.client.list_shards(NextToken=token), True)
            shards.extend(page["Shards"])
        return shards

    def _call(self, what: str, operation: Callable[[], _T], stream_level: bool = False) -> _T:
        """Run a Kinesis call under the backoff; map a missing stream (or shard) to what happens next."""
        try:
            return self.backoff.call(f"stream {self.stream_name}: {what}", operation)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            if stream_level or not self._stream_exists():
                endpoint = self.client.meta.endpoint_url
                raise InputError(f"stream {self.stream_name} does not exist at {endpoint}") from exc
            raise _ShardGone from exc

    def _stream_exists(self) -> bool:
        try:
            self.describe()
        except InputError:
            return False
        return True

    # -- the shard graph ------------------------------------------------------------------------

    def _sync_shards(self, *, initial: bool = False) -> bool:
        """Merge ``ListShards`` into the graph; True when it found a new shard or a newly closed one."""
        self.next_sync_at = self.clock() + SHARD_SYNC_INTERVAL
        changed = False
        for info in self._list_shards():
            shard_id = info["ShardId"]
            parents = tuple(p for p in (info.get("ParentShardId"), info.get("AdjacentParentShardId")) if p)
            shard = self.shards.get(shard_id)
            if shard is None:
                shard = self.shards[shard_id] = _Shard(shard_id, parents, discovered_later=not initial)
                changed = True
                if any(p in self.shards and self.shards[p].past_end_time for p in parents):
                    shard.finished = shard.past_end_time = True
            elif not shard.parents and parents:
                shard.parents = parents
            seq_range = info["SequenceNumberRange"]
            ending = seq_range.get("EndingSequenceNumber")
            if ending is not None and not shard.closed:
                shard.closed = changed = True
                shard.caught_up = False  # poll it again: it may have grown before it closed
                if int(ending) >= int(seq_range["StartingSequenceNumber"]):
                    shard.ending_sequence_number = int(ending)
                if initial and self.start.kind == "LATEST":
                    shard.finished = True  # nothing new can arrive in a closed shard
        return changed

    def _add_children(self, parent: _Shard, response: GetRecordsOutputTypeDef) -> None:
        unknown_parent = False
        for child in response.get("ChildShards") or []:
            if child["ShardId"] not in self.shards:
                parents = tuple(child.get("ParentShards") or [parent.shard_id])
                self.shards[child["ShardId"]] = _Shard(child["ShardId"], parents, discovered_later=True)
                unknown_parent |= any(p not in self.shards for p in parents)
        if unknown_parent or not response.get("ChildShards"):
            self._sync_shards()  # learn every parent before deciding a child is ready

    def _finish_descendants(self, shard_id: str) -> None:
        """Past ``end_time`` in a parent means past it in every child: children arrive later."""
        for shard in self.shards.values():
            if shard_id in shard.parents and not shard.finished:
                shard.finished = shard.past_end_time = True
                self._report(shard)
                self._finish_descendants(shard.shard_id)


class _ShardGone(Exception):
    """A shard-level call found no shard, though the stream exists (trimmed past retention)."""
