"""Replay: re-drive dead-lettered records, and the batches Lambda gave up on, through the pipeline.

Two kinds of input, one set of rules:

* **DLQ entries** (:func:`replay_dead_letters`): each entry's record (the user record alone
  when the envelope has it) goes through the pipeline again - only to the handler that failed
  on it, when the entry names one, so that no other handler sees it twice.
* **Lambda on-failure records**
  (:func:`~qldbstream.runtimes.lambda_failures.replay_lambda_failures`): the JSON document Lambda
  sends to an on-failure destination when it discards a Kinesis batch names a shard and a range of
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

This module holds the replay machinery (:class:`Replayer`, :class:`ReplayReport`) and the DLQ
re-drive; :mod:`qldbstream.runtimes.lambda_failures` the on-failure records and their ranges.
The replay logic does no I/O of its own: the pipeline (built by a :data:`PipelineFactory`),
the DLQ, the source of on-failure records and the Kinesis client are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qldbstream.core.masking_dlq import Sealer
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue

__all__ = [
    "CapturingDeadLetterQueue",
    "EntryOutcome",
    "PipelineFactory",
    "ReplayReport",
    "Replayer",
    "replay_dead_letters",
]

#: ``(dlq, handler names or None for all)`` -> a pipeline over those handlers, writing to ``dlq``,
#: sharing the app's de-duplication store, built with ``allow_hold=False``.
PipelineFactory = Callable[[DeadLetterQueue, frozenset[str] | None], Pipeline]
#: Records per ``Pipeline.process`` call when a Lambda range is re-driven.
CHUNK = 500


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
    judge_outcome(outcome, run, dry_run)
    return outcome


def judge_outcome(outcome: EntryOutcome, run: _Run, dry_run: bool) -> None:
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
                delete_finished(dlq.delete, handle, outcome, report)
            if not outcome.deleted:
                kept += 1
    return report


def _stream_order(letter: DeadLetter) -> tuple[str, int, int]:
    seq = letter.sequence_number
    return letter.shard_id or "", int(seq) if seq and seq.isdigit() else -1, letter.sub_sequence_number or 0


def delete_finished(
    delete: Callable[[str], None], handle: str, outcome: EntryOutcome, report: ReplayReport
) -> None:
    try:
        delete(handle)
    except Exception as exc:  # replayed but still there: the next replay finds it done (duplicate)
        report.errors.append(f"{outcome.kind} {outcome.id} succeeded but could not be deleted: {exc!r}")
        return
    outcome.deleted = True
