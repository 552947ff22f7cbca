"""The shards of one Kinesis data stream and a polling cursor on each: the bookkeeping shared by the
stream reader (:func:`qldbstream.io.kinesis_reader.read_stream`) and the standalone worker
(:mod:`qldbstream.runtimes.worker`).

:class:`StreamShards` knows the shard graph (``ListShards``, and the ``ChildShards`` a parent returns
at its end), makes ``GetShardIterator``/``GetRecords`` calls with throttling retried (``call_throttled``), and
keeps one :class:`Shard` cursor per shard. A shard becomes *exhausted* when reading it can yield
nothing more (closed and read to its end, past ``end_time``, at its tip once the window is over);
its owner decides when it is *finished* (the reader: at once; the worker: once every record read from
it is finished and checkpointed). A child shard is ready only when all its parents are finished.

Where a shard is (re-)read from, in order: after the last record read in this run
(``AFTER_SEQUENCE_NUMBER``); at a resume point (``AT_SEQUENCE_NUMBER`` a checkpoint, then the
leading record is dropped when the checkpoint already covers all of it - every user record of a KPL
aggregate, see :func:`covered`); the start position; ``TRIM_HORIZON`` for shards found after reading
started (children of a reshard, under ``LATEST``).

Local stand-ins differ from Kinesis in ways this module copes with on purpose: moto never reports the
end of a closed shard, so a shard that ``ListShards`` reports closed also ends once a record at or after
its ``EndingSequenceNumber`` has been read, or once it returns an empty batch at ``MillisBehindLatest``
0. Sequence numbers are compared as integers (moto uses ``"1"``, ``"10"``), and an
``EndingSequenceNumber`` below the shard's ``StartingSequenceNumber`` (kinesis-local reports
``9223372036854775807`` for every closed shard) is ignored.

Errors, and what happens next: a missing stream raises :class:`~qldbstream.core.errors.InputError`;
throttling that outlasts the backoff raises :class:`~qldbstream.core.errors.RetryableError` (the caller
waits ``retry_after`` and polls again); an expired iterator is renewed transparently; a shard trimmed
away while being read is exhausted with ``end_reason`` ``"gone"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar

from botocore.exceptions import ClientError

from qldbstream.core.deaggregate import is_aggregate, parse_aggregate
from qldbstream.core.errors import DeaggregationError, InputError, RetryableError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.aws_errors import error_code
from qldbstream.io.kinesis_reader import SHARD_SYNC_INTERVAL, StartPosition, call_throttled
from qldbstream.pipeline.reliability import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import (
        GetRecordsOutputTypeDef,
        GetShardIteratorInputTypeDef,
        ShardTypeDef,
    )

__all__ = ["EndReason", "Fetch", "Shard", "StreamShards", "covered"]

_T = TypeVar("_T")

#: Why a shard was exhausted.
EndReason = Literal[
    "shard-end", "end-time", "completed", "window-over", "at-tip", "gone", "closed-before-start", "ended"
]


def covered(data: bytes, sub_sequence_number: int) -> bool:
    """Does a checkpoint at sub-sequence ``sub_sequence_number`` of this Kinesis record cover all of it?

    A plain record has one user record (sub-sequence 0); a KPL aggregate is covered once its last user
    record is. A corrupt aggregate is dead-lettered whole at sub-sequence 0, so it counts as covered.
    ``-1`` means "nothing of this record is finished".
    """
    if sub_sequence_number < 0:
        return False
    if not is_aggregate(data):
        return True
    try:
        return sub_sequence_number >= len(parse_aggregate(data)) - 1
    except DeaggregationError:
        return True


@dataclass(slots=True)
class Shard:
    """One shard: its place in the graph and the cursor reading it."""

    shard_id: str
    parents: tuple[str, ...]
    closed: bool = False
    #: From ``ListShards``, only when it is a usable bound (see the module docstring).
    ending_sequence_number: int | None = None
    #: Found after reading started: read from TRIM_HORIZON when the start is LATEST.
    discovered_later: bool = False
    #: Re-read ``AT_SEQUENCE_NUMBER`` this (sequence, sub-sequence) when nothing was read yet in this run.
    resume: tuple[str, int] | None = None
    iterator: str | None = None
    #: The first and the last sequence number read in this run (``None`` before the first record).
    first_sequence_number: str | None = None
    last_sequence_number: str | None = None
    records_read: int = 0
    millis_behind_latest: int | None = None
    #: ``ApproximateArrivalTimestamp`` (epoch seconds) of the last record read.
    last_arrival: float | None = None
    caught_up: bool = False
    #: Reading can yield nothing more (``end_reason`` says why).
    exhausted: bool = False
    end_reason: EndReason | None = None
    #: Done: the owner finished it (children may start).
    finished: bool = False
    past_end_time: bool = False
    next_poll_at: float = 0.0
    expired_iterators: int = 0
    _skip: tuple[str, int] | None = None

    def exhaust(self, reason: EndReason) -> None:
        self.exhausted = True
        self.end_reason = self.end_reason or reason


@dataclass(frozen=True, slots=True)
class Fetch:
    """What one ``GetRecords`` call on a shard gave."""

    shard: Shard
    records: list[KinesisRecord]
    millis_behind_latest: int | None
    #: The shard was trimmed away: no call was answered.
    gone: bool = False


@dataclass(eq=False)
class StreamShards:
    """The shard graph of ``stream_name`` and a cursor per shard (see the module docstring).

    ``resume`` seeds checkpoints (shard id -> (sequence, sub-sequence)) and ``ended`` the shards
    already finished in an earlier run; ``on_descendant_finished`` is told about the shards finished
    because a parent went past ``end_time``. ``end_time`` is epoch seconds.
    """

    client: KinesisClient
    stream_name: str
    start: StartPosition
    end_time: float | None
    clock: Callable[[], float]
    #: throttled calls: how often and how long to wait (:func:`~qldbstream.io.kinesis_reader.kinesis_retry`)
    retry: RetryPolicy
    sleep: Callable[[float], None]
    resume: dict[str, tuple[str, int]] = field(default_factory=dict)
    ended: frozenset[str] = frozenset()
    on_descendant_finished: Callable[[Shard], None] | None = None
    #: Open shards at their tip are exhausted (the stream is complete).
    stop_at_tip: bool = False
    shards: dict[str, Shard] = field(default_factory=dict)
    stream_arn: str | None = None
    next_sync_at: float = 0.0

    def ready(self) -> list[Shard]:
        """Shards to poll: not exhausted, not finished, every parent finished."""
        return [
            s for s in self.shards.values() if not s.finished and not s.exhausted and self.parents_done(s)
        ]

    def parents_done(self, shard: Shard) -> bool:
        return all(p not in self.shards or self.shards[p].finished for p in shard.parents)

    def finish(self, shard: Shard) -> None:
        shard.finished = True

    def rewind(self, shard: Shard, resume: tuple[str, int] | None) -> None:
        """Read ``shard`` again from ``resume`` (see :class:`Shard`); its end, if reached, comes again."""
        shard.iterator = shard.last_sequence_number = shard.first_sequence_number = None
        shard.resume = resume
        shard.caught_up = shard.exhausted = shard.past_end_time = False
        shard.end_reason = None

    # -- one poll --------------------------------------------------------------------------------

    def fetch(self, shard: Shard, limit: int) -> Fetch:
        """One ``GetRecords`` call of at most ``limit`` records on ``shard``; updates its cursor."""
        response = self._get_records(shard, limit)
        if response is None:  # the shard disappeared (trimmed past retention) while being read
            return Fetch(shard, [], None, gone=True)
        batch = response.get("Records", [])
        behind = response.get("MillisBehindLatest")
        shard.millis_behind_latest = behind
        now = self.clock()
        out: list[KinesisRecord] = []
        skip = shard._skip
        consumed: str | None = None
        for raw in batch:
            arrival = raw.get("ApproximateArrivalTimestamp")
            arrived = None if arrival is None else arrival.timestamp()
            if self.end_time is not None and arrived is not None and arrived >= self.end_time:
                shard.exhaust("end-time")
                shard.past_end_time = True
                break
            consumed = raw["SequenceNumber"]
            if skip is not None and consumed == skip[0] and covered(raw["Data"], skip[1]):
                skip = None
                continue  # the checkpoint already covers this record
            skip = None
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
        if consumed is not None:
            shard.last_sequence_number = consumed
            shard._skip = None
        if out:
            shard.first_sequence_number = shard.first_sequence_number or out[0].sequence_number
            shard.records_read += len(out)
            shard.last_arrival = out[-1].approximate_arrival_timestamp
        shard.caught_up = not batch and behind == 0
        shard.iterator = response.get("NextShardIterator")
        if shard.iterator is None:  # shard end: Kinesis names the children
            shard.exhaust("shard-end")
            self._add_children(shard, response)
        elif shard.closed and (shard.caught_up or self._read_past_end(shard)):
            shard.exhaust("shard-end")  # moto never reports shard end
        elif shard.caught_up and self.end_time is not None and now >= self.end_time:
            shard.exhaust("window-over")  # tailing, at the tip, and the window is over
        elif shard.caught_up and self.stop_at_tip:
            shard.exhaust("at-tip")
        if shard.past_end_time:
            self._finish_descendants(shard.shard_id)
        return Fetch(shard, out, behind)

    def _read_past_end(self, shard: Shard) -> bool:
        last, end = shard.last_sequence_number, shard.ending_sequence_number
        return last is not None and end is not None and int(last) >= end

    # -- Kinesis calls ---------------------------------------------------------------------------

    def _get_records(self, shard: Shard, limit: int) -> GetRecordsOutputTypeDef | None:
        """``GetRecords`` with throttling retried and an expired iterator renewed; None if trimmed."""
        while True:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
                if shard.iterator is None:
                    return None
            iterator = shard.iterator
            try:
                response = self.call(
                    f"GetRecords on {shard.shard_id}",
                    partial(self.client.get_records, ShardIterator=iterator, Limit=limit),
                )
            except _ShardGone:
                shard.exhaust("gone")
                return None
            except ClientError as exc:
                if error_code(exc) != "ExpiredIteratorException":
                    raise
                shard.expired_iterators += 1
                if shard.expired_iterators > self.retry.max_attempts:
                    raise RetryableError(
                        f"stream {self.stream_name}: the iterator of {shard.shard_id} expired "
                        f"{shard.expired_iterators} times in a row"
                    ) from exc
                shard.iterator = None  # renewed after the last record read, on the next turn
                continue
            shard.expired_iterators = 0
            return response

    def _iterator(self, shard: Shard) -> str | None:
        """A new iterator (see the module docstring for where). ``None`` if the shard was trimmed."""
        request: GetShardIteratorInputTypeDef = {
            "StreamName": self.stream_name,
            "ShardId": shard.shard_id,
            "ShardIteratorType": "TRIM_HORIZON",
        }
        if shard.last_sequence_number is not None:
            request["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            request["StartingSequenceNumber"] = shard.last_sequence_number
        elif shard.resume is not None:
            request["ShardIteratorType"] = "AT_SEQUENCE_NUMBER"
            request["StartingSequenceNumber"] = shard.resume[0]
            shard._skip = shard.resume
        elif self.start.timestamp is not None:
            request["ShardIteratorType"] = "AT_TIMESTAMP"
            request["Timestamp"] = self.start.timestamp
        elif self.start.kind == "LATEST" and not shard.discovered_later:
            request["ShardIteratorType"] = "LATEST"
        try:
            response = self.call(
                f"GetShardIterator on {shard.shard_id}", partial(self.client.get_shard_iterator, **request)
            )
        except _ShardGone:
            shard.exhaust("gone")
            return None
        return response["ShardIterator"]

    def describe(self) -> str:
        """``DescribeStreamSummary``: the stream's ARN (remembered); InputError when it does not exist."""
        summary = self.call(
            "DescribeStreamSummary",
            lambda: self.client.describe_stream_summary(StreamName=self.stream_name),
            stream_level=True,
        )
        self.stream_arn = summary["StreamDescriptionSummary"]["StreamARN"]
        return self.stream_arn

    def _list_shards(self) -> list[ShardTypeDef]:
        """Every shard, all pages. ``NextToken`` goes alone (Kinesis rejects it with a stream name)."""
        what = "ListShards"
        page = self.call(what, lambda: self.client.list_shards(StreamName=self.stream_name), True)
        shards = list(page["Shards"])
        while token := page.get("NextToken"):
            page = self.call(what, lambda: self.client.list_shards(NextToken=token), True)
            shards.extend(page["Shards"])
        return shards

    def call(self, what: str, operation: Callable[[], _T], stream_level: bool = False) -> _T:
        """Run a Kinesis call under the backoff; map a missing stream (or shard) to what happens next."""
        try:
            return call_throttled(f"stream {self.stream_name}: {what}", operation, self.retry, self.sleep)
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

    # -- the shard graph -------------------------------------------------------------------------

    def _new_shard(self, shard_id: str, parents: tuple[str, ...], *, later: bool) -> Shard:
        # Under LATEST, a shard whose parent was read in an earlier run is read from its beginning.
        earlier = any(p in self.resume or p in self.ended for p in parents)
        shard = self.shards[shard_id] = Shard(shard_id, parents, discovered_later=later or earlier)
        shard.resume = self.resume.get(shard_id)
        if shard_id in self.ended:
            shard.finished = True
            shard.exhaust("ended")
        elif any(p in self.shards and self.shards[p].past_end_time for p in parents):
            shard.finished = shard.past_end_time = True
            shard.exhaust("end-time")
        return shard

    def sync(self, *, initial: bool = False) -> bool:
        """Merge ``ListShards`` into the graph; True when it found a new shard or a newly closed one."""
        self.next_sync_at = self.clock() + SHARD_SYNC_INTERVAL
        changed = False
        for info in self._list_shards():
            shard_id = info["ShardId"]
            parents = tuple(p for p in (info.get("ParentShardId"), info.get("AdjacentParentShardId")) if p)
            shard = self.shards.get(shard_id)
            if shard is None:
                shard = self._new_shard(shard_id, parents, later=not initial)
                changed = True
            elif not shard.parents and parents:
                shard.parents = parents
            seq_range = info["SequenceNumberRange"]
            ending = seq_range.get("EndingSequenceNumber")
            if ending is not None and not shard.closed:
                shard.closed = changed = True
                shard.caught_up = False  # poll it again: it may have grown before it closed
                if int(ending) >= int(seq_range["StartingSequenceNumber"]):
                    shard.ending_sequence_number = int(ending)
                if initial and self.start.kind == "LATEST" and shard.resume is None and not shard.finished:
                    shard.finished = True  # nothing new can arrive in a closed shard
                    shard.exhaust("closed-before-start")
        return changed

    def _add_children(self, parent: Shard, response: GetRecordsOutputTypeDef) -> None:
        unknown_parent = False
        for child in response.get("ChildShards") or []:
            if child["ShardId"] not in self.shards:
                parents = tuple(child.get("ParentShards") or [parent.shard_id])
                self._new_shard(child["ShardId"], parents, later=True)
                unknown_parent |= any(p not in self.shards for p in parents)
        if unknown_parent or not response.get("ChildShards"):
            self.sync()  # learn every parent before deciding a child is ready

    def _finish_descendants(self, shard_id: str) -> None:
        """Past ``end_time`` in a parent means past it in every child: children arrive later."""
        for shard in self.shards.values():
            if shard_id in shard.parents and not shard.finished:
                shard.finished = shard.past_end_time = True
                shard.exhaust("end-time")
                if self.on_descendant_finished is not None:
                    self.on_descendant_finished(shard)
                self._finish_descendants(shard.shard_id)


class _ShardGone(Exception):
    """A shard-level call found no shard, though the stream exists (trimmed past retention)."""
