"""Replay the batches Lambda gave up on: its on-failure destination records, re-read and re-driven.

The JSON document Lambda sends to an on-failure destination when it discards a Kinesis batch
(:class:`LambdaFailure`) names a shard and a range of sequence numbers, not the records. The range
is read again from the stream (:func:`read_range`) and re-driven to every handler through a
:class:`~qldbstream.runtimes.replay.Replayer`, under the rules in :mod:`qldbstream.runtimes.replay`;
the poison records of a range that finished are dead-lettered once (marked in the
de-duplication store), then the on-failure record is deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qldbstream.core.dedupe import DedupeStore
from qldbstream.core.errors import InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import call_throttled, kinesis_retry
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue
from qldbstream.runtimes.replay import EntryOutcome, Replayer, ReplayReport, delete_finished, judge_outcome

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

__all__ = [
    "FileLambdaFailures",
    "LambdaFailure",
    "LambdaFailureSource",
    "SqsLambdaFailures",
    "parse_lambda_failures",
    "read_range",
    "replay_lambda_failures",
]

#: The de-duplication store "handler" under which dead-lettered Lambda-range records are marked.
DEAD_LETTERED = "qldbstream.runtimes.replay-dlq"


@dataclass(frozen=True)
class LambdaFailure:
    """The ``KinesisBatchInfo`` of a Lambda on-failure destination record (and who sent it)."""

    shard_id: str
    start_sequence_number: str
    end_sequence_number: str
    stream_arn: str
    batch_size: int | None = None
    request_id: str | None = None
    function_arn: str | None = None
    condition: str | None = None
    timestamp: str | None = None

    @property
    def stream_name(self) -> str:
        """``arn:aws:kinesis:<region>:<account>:stream/<name>`` (or ``.../consumer/...``) -> name."""
        _, _, rest = self.stream_arn.partition(":stream/")
        if not rest:
            raise InputError(f"streamArn {self.stream_arn!r} is not a Kinesis stream ARN")
        return rest.split("/", 1)[0]

    @classmethod
    def from_document(cls, document: Any) -> LambdaFailure:
        """Read one on-failure record; SNS notifications (``Message`` holds it) are unwrapped."""
        if isinstance(document, Mapping) and document.get("Type") == "Notification":
            document = json.loads(str(document.get("Message", "")))
        info = document.get("KinesisBatchInfo") if isinstance(document, Mapping) else None
        if not isinstance(info, Mapping):
            raise InputError("not a Lambda on-failure record for Kinesis: no KinesisBatchInfo")
        try:
            start, end = str(info["startSequenceNumber"]), str(info["endSequenceNumber"])
            shard, arn = str(info["shardId"]), str(info["streamArn"])
        except KeyError as exc:
            raise InputError(f"KinesisBatchInfo has no {exc.args[0]}") from None
        if not (start.isdigit() and end.isdigit()) or int(start) > int(end):
            raise InputError(f"KinesisBatchInfo has no valid sequence number range: {start}..{end}")
        request = document.get("requestContext")
        request = request if isinstance(request, Mapping) else {}
        size = info.get("batchSize")
        return cls(
            shard,
            start,
            end,
            arn,
            int(size) if isinstance(size, int) else None,
            request.get("requestId"),
            request.get("functionArn"),
            request.get("condition"),
            document.get("timestamp"),
        )

    def describe(self) -> str:
        start, end = self.start_sequence_number, self.end_sequence_number
        return f"stream {self.stream_name}, shard {self.shard_id}, sequence numbers {start}..{end}"


def parse_lambda_failures(text: str, source: str) -> list[LambdaFailure]:
    """One on-failure record, a JSON list of them, or JSON Lines; raises InputError."""
    try:
        documents: Any = json.loads(text)
    except ValueError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise InputError(f"{source}: not JSON or JSON Lines ({exc})") from None
    if not isinstance(documents, list):
        documents = [documents]
    try:
        return [LambdaFailure.from_document(d) for d in documents]
    except (InputError, ValueError) as exc:
        raise InputError(f"{source}: {exc}") from None


class LambdaFailureSource(Protocol):
    #: whether :meth:`delete` removes a record (files are the operator's: they are kept)
    deletable: bool

    def receive(self, limit: int) -> Iterator[tuple[str, LambdaFailure | InputError]]:
        """On-failure records (or why one is unreadable), each with a handle for :meth:`delete`."""
        ...

    def delete(self, handle: str) -> None: ...


class FileLambdaFailures:
    """On-failure records saved in files (one document, a JSON list, or JSON Lines each)."""

    deletable = False

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def receive(self, limit: int) -> Iterator[tuple[str, LambdaFailure | InputError]]:
        for path in self.paths:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
            for n, failure in enumerate(parse_lambda_failures(text, path), 1):
                yield f"{path}#{n}", failure

    def delete(self, handle: str) -> None:
        return None


class SqsLambdaFailures:
    """An SQS queue that is a Lambda on-failure destination (raw or SNS-wrapped messages)."""

    deletable = True

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url

    def receive(self, limit: int) -> Iterator[tuple[str, LambdaFailure | InputError]]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(limit, 10)), WaitTimeSeconds=1
        )
        for message in response.get("Messages", []):
            handle = str(message["ReceiptHandle"])
            try:
                yield handle, LambdaFailure.from_document(json.loads(message["Body"]))
            except (ValueError, InputError) as exc:
                yield handle, InputError(f"SQS message {message.get('MessageId')} is unreadable: {exc}")

    def delete(self, handle: str) -> None:
        self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)


def read_range(
    kinesis: KinesisClient,
    failure: LambdaFailure,
    *,
    limit: int = 1000,
    sleep: Callable[[float], None] = time.sleep,
    max_empty_polls: int = 50,
) -> list[KinesisRecord]:
    """The records ``startSequenceNumber`` .. ``endSequenceNumber`` (inclusive) of the shard.

    Raises :class:`~qldbstream.core.errors.InputError` when the range cannot be read whole: records
    past retention, another stream, or the end record never found; throttling is retried (then
    :class:`~qldbstream.core.errors.RetryableError`).
    """
    policy = kinesis_retry()
    name, start, end = (
        failure.stream_name,
        int(failure.start_sequence_number),
        int(failure.end_sequence_number),
    )
    response = call_throttled(
        f"GetShardIterator on {failure.shard_id}",
        partial(
            kinesis.get_shard_iterator,
            StreamName=name,
            ShardId=failure.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=failure.start_sequence_number,
        ),
        policy,
        sleep,
    )
    iterator: str | None = response["ShardIterator"]
    out: list[KinesisRecord] = []
    empty = 0
    while iterator is not None and empty < max_empty_polls:
        page = call_throttled(
            f"GetRecords on {failure.shard_id}",
            partial(kinesis.get_records, ShardIterator=iterator, Limit=limit),
            policy,
            sleep,
        )
        for raw in page.get("Records", []):
            seq = int(raw["SequenceNumber"])
            if not out and seq != start:
                raise InputError(
                    f"{failure.describe()}: the first record is {raw['SequenceNumber']}, not the start "
                    "(records past the stream's retention are lost)"
                )
            if seq > end:
                raise InputError(f"{failure.describe()}: the end record is not in the shard")
            arrival = raw.get("ApproximateArrivalTimestamp")
            out.append(
                KinesisRecord(
                    raw["Data"],
                    raw["SequenceNumber"],
                    raw.get("PartitionKey", ""),
                    failure.shard_id,
                    None if arrival is None else arrival.timestamp(),
                    None,
                    failure.stream_arn,
                    f"stream {name}",
                )
            )
            if seq == end:
                return out
        empty = 0 if page.get("Records") else empty + 1
        if not page.get("Records"):
            sleep(0.2)  # Kinesis allows 5 GetRecords calls per second per shard
        iterator = page.get("NextShardIterator")
    raise InputError(f"{failure.describe()}: read {len(out)} records but not the end record")


def replay_lambda_failures(
    source: LambdaFailureSource,
    replayer: Replayer,
    read: Callable[[LambdaFailure], list[KinesisRecord]],
    dlq: DeadLetterQueue,
    *,
    store: DedupeStore | None = None,
    limit: int | None = None,
    handler: str | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Re-read and re-drive each on-failure record's range; delete the record once it finished.

    The poison records of a finished range are written to ``dlq``, and marked in ``store`` (the
    app's de-duplication store) so that replaying the same range again writes them only once.
    """
    report = ReplayReport(dry_run=dry_run)
    seen: set[str] = set()
    only = frozenset() if dry_run else frozenset({handler}) if handler else None
    while limit is None or report.replayed < limit:
        fresh = [(h, f) for h, f in source.receive(10) if h not in seen]
        if not fresh:
            break
        for handle, failure in fresh:
            if limit is not None and report.replayed >= limit:
                break
            seen.add(handle)
            if isinstance(failure, InputError):
                report.errors.append(f"{handle}: {failure}")
                continue
            outcome = _replay_range(replayer, read, dlq, store, handle, failure, only, dry_run)
            report.outcomes.append(outcome)
            if outcome.status == "succeeded" and source.deletable:
                delete_finished(source.delete, handle, outcome, report)
    return report


def _replay_range(
    replayer: Replayer,
    read: Callable[[LambdaFailure], list[KinesisRecord]],
    dlq: DeadLetterQueue,
    store: DedupeStore | None,
    handle: str,
    failure: LambdaFailure,
    only: frozenset[str] | None,
    dry_run: bool,
) -> EntryOutcome:
    outcome = EntryOutcome("lambda-failure", failure.request_id or handle, failure.describe())
    try:
        records = read(failure)
        outcome.records = len(records)
        run = replayer.run(failure.shard_id, records, only)
    except Exception as exc:  # unreadable range, Kinesis or store down: it stays, say why
        outcome.detail = f"replay failed: {exc}"
        return outcome
    judge_outcome(outcome, run, dry_run)
    if outcome.status != "succeeded" or not run.captured:
        return outcome
    keys = {_letter_key(letter): letter for letter in run.captured}
    try:  # the range finished: now set its poison records aside, once (a rerun finds the marks)
        already = store.done(DEAD_LETTERED, list(keys)) if store is not None else set()
        for key, letter in keys.items():
            if key not in already:
                dlq.put(letter)
                outcome.dead_lettered += 1
        if store is not None:
            store.mark_done(DEAD_LETTERED, list(keys))
    except Exception as exc:
        outcome.status, outcome.detail = "failed", f"could not dead-letter a poison record: {exc!r}"
        return outcome
    outcome.detail += f", {outcome.dead_lettered} poison records dead-lettered"
    if already:
        outcome.detail += f" ({len(already)} already were)"
    return outcome


def _letter_key(letter: DeadLetter) -> str:
    where = f"{letter.stream_arn}#{letter.shard_id}#{letter.sequence_number}#{letter.sub_sequence_number}"
    return f"dead-letter#{where}#{letter.stage}#{letter.handler or ''}"
