"""Replay: re-drive dead-lettered records, and the batches Lambda gave up on, through the pipeline.

Two kinds of input, one set of rules:

* **DLQ entries** (:func:`replay_dead_letters`): each entry's record (the user record alone
  when the envelope has it) goes through the pipeline again - only to the handler that failed
  on it, when the entry names one, so that no other handler sees it twice.
* **Lambda on-failure records** (:func:`replay_lambda_failures`): the JSON document Lambda sends
  to an on-failure destination when it discards a Kinesis batch names a shard and a range of
  sequence numbers (``KinesisBatchInfo``), not the records. The range is read again from the
  stream (``AT_SEQUENCE_NUMBER`` start, up to and including the end) and re-driven to every
  handler.

The rules:

1. **A replay is idempotent**: handlers de-duplicate against the configured store, so a record
   already processed is skipped (reported as a duplicate), never delivered twice.
2. **An entry is deleted only after it finished** - every handler that wants its record did it,
   skipped it as a duplicate or a late revision - **without being dead-lettered again**.
3. **A replay writes no second DLQ entry for a record that fails again.** The replay pipeline's
   DLQ is a :class:`CapturingDeadLetterQueue`: the new failure goes into the report and the
   original entry stays where it was, unchanged. For a Lambda range, the records that are
   poison are written to the real DLQ only once the whole range finished (then they are set
   aside, and the on-failure record is deleted); a range that halts writes nothing and stays.

The replay logic does no I/O of its own: the pipeline (built by a :data:`PipelineFactory`),
the DLQ, the source of on-failure records and the Kinesis client are passed in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qldbstream.core.dedupe import DedupeStore
from qldbstream.core.errors import InputError
from qldbstream.core.masking import Sealer
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import call_throttled, kinesis_retry
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

__all__ = [
    "CapturingDeadLetterQueue",
    "EntryOutcome",
    "FileLambdaFailures",
    "LambdaFailure",
    "LambdaFailureSource",
    "PipelineFactory",
    "ReplayReport",
    "Replayer",
    "SqsLambdaFailures",
    "parse_lambda_failures",
    "read_range",
    "replay_dead_letters",
    "replay_lambda_failures",
]

#: ``(dlq, handler names or None for all)`` -> a pipeline over those handlers, writing to ``dlq``,
#: sharing the app's de-duplication store, built with ``allow_hold=False``.
PipelineFactory = Callable[[DeadLetterQueue, frozenset[str] | None], Pipeline]
#: Records per ``Pipeline.process`` call when a Lambda range is re-driven.
CHUNK = 500
#: The de-duplication store "handler" under which dead-lettered Lambda-range records are marked.
DEAD_LETTERED = "qldbstream.runtimes.replay-dlq"


class CapturingDeadLetterQueue:
    """The replay pipeline's DLQ: keeps what would be dead-lettered, writes nothing."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def put(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def delete(self, handle: str) -> None:
        return None


@dataclass
class EntryOutcome:
    """What happened to one DLQ entry or one Lambda on-failure record."""

    kind: str  #: ``dead-letter`` or ``lambda-failure``
    id: str
    where: str
    handler: str | None = None
    #: ``succeeded``, ``failed`` or (dry run) ``would-replay``
    status: str = "failed"
    detail: str = ""
    records: int = 0
    delivered: int = 0
    duplicates: int = 0
    late: int = 0
    #: the new failures (error type, message, stage, handler) of a record that failed again
    failures: list[dict[str, str | None]] = field(default_factory=list)
    #: poison records of a Lambda range set aside in the DLQ
    dead_lettered: int = 0
    deleted: bool = False


@dataclass
class ReplayReport:
    dry_run: bool = False
    outcomes: list[EntryOutcome] = field(default_factory=list)
    #: problems that are not one entry's (an unreadable DLQ, an entry that could not be deleted)
    errors: list[str] = field(default_factory=list)

    @property
    def replayed(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> int:
        return sum(o.status in ("succeeded", "would-replay") for o in self.outcomes)

    @property
    def failed(self) -> int:
        return self.replayed - self.succeeded

    @property
    def deleted(self) -> int:
        return sum(o.deleted for o in self.outcomes)

    @property
    def ok(self) -> bool:
        """Everything replayed succeeded, and nothing else went wrong."""
        return self.failed == 0 and not self.errors

    def summary(self) -> str:
        verb = "checked" if self.dry_run else "replayed"
        return (
            f"{verb} {self.replayed}, succeeded {self.succeeded}, still failing {self.failed}, "
            f"deleted {self.deleted}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "replayed": self.replayed,
            "succeeded": self.succeeded,
            "stillFailing": self.failed,
            "deleted": self.deleted,
            "errors": list(self.errors),
            "entries": [asdict(o) for o in self.outcomes],
        }


@dataclass
class _Run:
    finished: bool = True
    reason: str = ""
    captured: list[DeadLetter] = field(default_factory=list)
    delivered: int = 0
    duplicates: int = 0
    late: int = 0


class Replayer:
    """Re-drives records through one replay pipeline per handler set, capturing re-dead-letters."""

    def __init__(
        self, pipeline_for: PipelineFactory, handlers: Sequence[str], sealer: Sealer | None = None
    ) -> None:
        self.pipeline_for = pipeline_for
        self.handlers = tuple(handlers)
        #: opens sealed dead letters (masking on); verification then runs on the original bytes
        self.sealer = sealer
        self._pipelines: dict[frozenset[str] | None, tuple[Pipeline, CapturingDeadLetterQueue]] = {}

    def run(
        self,
        shard_id: str,
        records: Sequence[KinesisRecord],
        only: frozenset[str] | None,
        *,
        admitted: bool = False,
    ) -> _Run:
        """Process ``records`` in order; stop at the first batch that does not finish.

        Records whose block summary is not among them cannot be delivered (the delivery gate): at
        the end they are dead-lettered again as unverifiable - captured, so the entry stays -
        unless ``admitted`` (a handler's dead letter: the record passed the gate when it was first
        processed)."""
        if only not in self._pipelines:
            capture = CapturingDeadLetterQueue()
            self._pipelines[only] = (self.pipeline_for(capture, only), capture)
        pipeline, capture = self._pipelines[only]
        capture.letters.clear()
        run = _Run()
        for start in range(0, len(records), CHUNK):
            result = pipeline.process(shard_id, records[start : start + CHUNK], admitted=admitted)
            run.delivered += sum(result.delivered.values())
            run.duplicates += result.duplicates
            run.late += result.late
            if result.halted or result.first_unfinished is not None or result.held:
                run.finished = False
                run.reason = result.halt_reason or "the record did not finish"
                break
        if run.finished:
            drained = pipeline.drain()  # what waited for a block summary the input does not hold
            run.delivered += sum(drained.delivered.values())
            if drained.halted:
                run.finished = False
                run.reason = drained.halt_reason or "a record waits for its block summary"
        run.captured = list(capture.letters)
        return run


def _failures(letters: Sequence[DeadLetter]) -> list[dict[str, str | None]]:
    return [
        {"stage": f.stage, "handler": f.handler, "errorType": f.error_type, "errorMessage": f.error_message}
        for f in letters
    ]


def _detail(run: _Run) -> str:
    parts = [f"delivered {run.delivered}"]
    if run.duplicates:
        parts.append(f"{run.duplicates} already done (duplicates)")
    if run.late:
        parts.append(f"{run.late} late and not delivered (late policy)")
    return ", ".join(parts)


def _replay_one(replayer: Replayer, letter: DeadLetter, dry_run: bool) -> EntryOutcome:
    outcome = EntryOutcome("dead-letter", letter.id, letter.position.describe(), letter.handler, records=1)
    if letter.handler is not None and letter.handler not in replayer.handlers:
        outcome.detail = f"handler {letter.handler} is not active: activate it to replay this entry"
        return outcome
    try:
        record = letter.kinesis_record(replayer.sealer)
    except ValueError as exc:
        outcome.detail = str(exc)
        return outcome
    only = frozenset() if dry_run else frozenset({letter.handler}) if letter.handler else None
    try:
        # a handler's dead letter passed the delivery gate when it was first processed
        admitted = letter.stage == "handler"
        run = replayer.run(letter.shard_id or "dlq-replay", [record], only, admitted=admitted)
    except Exception as exc:  # e.g. the de-duplication store is down: the entry stays, say why
        outcome.detail = f"replay failed: {exc!r}"
        return outcome
    _judge(outcome, run, dry_run)
    return outcome


def _judge(outcome: EntryOutcome, run: _Run, dry_run: bool) -> None:
    outcome.delivered, outcome.duplicates, outcome.late = run.delivered, run.duplicates, run.late
    outcome.failures = _failures(run.captured)
    first = run.captured[0] if run.captured else None
    if not run.finished:
        outcome.detail = f"halted: {run.reason}"
    elif first is not None and outcome.kind == "dead-letter":
        outcome.detail = f"failed again at {first.stage}: {first.error_type}: {first.error_message}"
    elif dry_run:
        outcome.status = "would-replay"
        outcome.detail = "decodes and verifies"
        if first is not None:
            outcome.detail = f"{len(run.captured)} records would be dead-lettered ({first.error_type})"
    else:
        outcome.status, outcome.detail = "succeeded", _detail(run)


def replay_dead_letters(
    dlq: DeadLetterQueue,
    replayer: Replayer,
    *,
    limit: int | None = None,
    handler: str | None = None,
    dry_run: bool = False,
    batch: int = 10,
) -> ReplayReport:
    """Replay the entries of ``dlq`` (those of ``handler`` only, when given), at most ``limit``.

    ``dry_run`` only decodes and verifies each entry's record again (no handler runs, nothing
    is deleted). An entry that stays is not read twice: the DLQ is read until it returns no
    entry not seen yet (an SQS entry that stays is invisible for the queue's visibility timeout).
    """
    report = ReplayReport(dry_run=dry_run)
    seen: set[str] = set()
    kept, idle = 0, 0
    while limit is None or report.replayed < limit:
        want = batch if limit is None else min(batch, limit - report.replayed)
        try:
            entries = list(dlq.receive(kept + want))
        except Exception as exc:  # an unreadable entry or queue: stop here, say so
            report.errors.append(f"cannot read the dead-letter queue: {exc!r}")
            break
        fresh = [(h, letter) for h, letter in entries if letter.id not in seen]
        if not fresh:
            idle += 1
            if not entries or idle >= 3:
                break
            continue
        idle = 0
        fresh.sort(key=lambda entry: _stream_order(entry[1]))  # one document's versions in order
        for handle, letter in fresh:
            if limit is not None and report.replayed >= limit:
                break
            seen.add(letter.id)
            if handler is not None and letter.handler != handler:
                kept += 1
                continue
            outcome = _replay_one(replayer, letter, dry_run)
            report.outcomes.append(outcome)
            if outcome.status == "succeeded":
                _delete(dlq.delete, handle, outcome, report)
            if not outcome.deleted:
                kept += 1
    return report


def _stream_order(letter: DeadLetter) -> tuple[str, int, int]:
    seq = letter.sequence_number
    return letter.shard_id or "", int(seq) if seq and seq.isdigit() else -1, letter.sub_sequence_number or 0


def _delete(delete: Callable[[str], None], handle: str, outcome: EntryOutcome, report: ReplayReport) -> None:
    try:
        delete(handle)
    except Exception as exc:  # replayed but still there: the next replay finds it done (duplicate)
        report.errors.append(f"{outcome.kind} {outcome.id} succeeded but could not be deleted: {exc!r}")
        return
    outcome.deleted = True


# --- Lambda on-failure destination records --------------------------------------------------------


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
                _delete(source.delete, handle, outcome, report)
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
    _judge(outcome, run, dry_run)
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
