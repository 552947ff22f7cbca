"""The pipeline: one shard's batch of Kinesis records in, per-record outcomes and a checkpoint out.

    deaggregate → decode → verify → dedupe/order → route → handlers → flush → checkpoint

Every runtime (Lambda, the standalone worker, the KCL record processor) is a thin adapter over
:meth:`Pipeline.process`, and all of them obey the one checkpoint rule it computes:

    **never advance past a record that is neither done nor dead-lettered.**

A user record is *finished* when it was dead-lettered, or when every handler that wants it has
processed it (or skipped it as a duplicate or a late revision, or dead-lettered it). The
checkpoint is the last user record of the batch's finished prefix; Lambda reports the first
unfinished Kinesis record instead (``batchItemFailures``).

The pipeline does no I/O of its own: handlers, the de-duplication store, the DLQ, the clock and
``sleep`` are passed in. With a :class:`~qldbstream.masking.Masker`, every record is verified on
its original bytes and then masked (handlers see masked ``data``), and dead letters are sealed
(the raw bytes encrypted, a masked copy for humans; :func:`~qldbstream.masking.seal_envelope`).
By default a failure stops the shard at that record (order is kept);
with ``stop_on_first_failure=False`` later records are still processed, but the checkpoint
stays at the first unfinished one.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from qldbstream.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.decode import BlockSummary, JournalRecord, RevisionDetails, decode
from qldbstream.dedupe import DedupeStore, InMemoryDedupeStore, LatePolicy, Planner
from qldbstream.dlq import DeadLetter, DeadLetterQueue, envelope_for
from qldbstream.errors import DeaggregationError, PoisonRecordError
from qldbstream.handler import BatchItemError, Handler, HandlerContext
from qldbstream.masking import Masker, Sealer, seal_envelope
from qldbstream.metrics import Metrics, NullMetrics
from qldbstream.records import KinesisRecord, UserRecord
from qldbstream.reliability import CircuitBreaker, Disposition, RetryPolicy, classify
from qldbstream.tracing import span
from qldbstream.verify import Failure, Verifier

__all__ = ["BatchResult", "Pipeline", "PipelineSettings", "VerificationAction"]

log = logging.getLogger("qldbstream.pipeline")


class VerificationAction(StrEnum):
    DEAD_LETTER = "dead-letter"  #: a record failing a check goes to the DLQ, handlers never see it
    HALT = "halt"  #: stop the shard: an operator must look
    DELIVER = "deliver"  #: observe-only: deliver anyway (failures are still counted and logged)


@dataclass(frozen=True)
class PipelineSettings:
    stop_on_first_failure: bool = True
    verification_action: VerificationAction = VerificationAction.DEAD_LETTER
    late_policy: LatePolicy = LatePolicy.DROP
    reorder_window: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_failures: int = 5
    breaker_recovery: float = 60.0
    breaker_trials: int = 3
    #: stop before the deadline with this many seconds left (Lambda timeouts)
    deadline_margin: float = 1.0


@dataclass
class BatchResult:
    """What happened to one batch. ``checkpoint`` is ``(sequence, sub_sequence)`` or ``None``."""

    shard_id: str | None
    records: int = 0
    user_records: int = 0
    finished: int = 0
    checkpoint: tuple[str, int] | None = None
    #: the first Kinesis record that is not finished (what Lambda reports as the batch item failure)
    first_unfinished: KinesisRecord | None = None
    halted: bool = False
    halt_reason: str = ""
    dead_lettered: int = 0
    verification_failures: list[Failure] = field(default_factory=list)
    delivered: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    late: int = 0
    held: int = 0
    retries: int = 0


class _Entry:
    """One user record's progress through the batch."""

    __slots__ = ("dead", "hstate", "k", "poison", "record", "user")

    def __init__(self, k: int, user: UserRecord | None, record: JournalRecord | None) -> None:
        self.k = k
        #: ``None`` for a Kinesis record that could not be deaggregated (the entry stands for it)
        self.user = user
        self.record = record
        self.dead = False
        #: set when the record is poison: (stage, error, record, verification failures); it is
        #: dead-lettered once the batch knows how far the checkpoint may go (never beyond)
        self.poison: tuple[str, BaseException, JournalRecord | None, list[Failure] | None] | None = None
        #: handler -> "done" | "skip" | "dlq" | "pending"; absent means the handler does not want it
        self.hstate: dict[str, str] = {}

    def finished(self) -> bool:
        if self.dead:
            return True
        if self.record is None or self.poison is not None:
            return False
        return all(s != "pending" for s in self.hstate.values())


def _with_attempt(ctx: HandlerContext, attempt: int, offset: int) -> HandlerContext:
    """The batch context for one delivery attempt (late indexes shifted to the chunk)."""
    late = (
        frozenset(i - offset for i in ctx.late_indexes if i >= offset)
        if ctx.late_indexes
        else ctx.late_indexes
    )
    return replace(ctx, attempt=attempt, late_indexes=late)


class _Halt(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Pipeline:
    """Processes batches for any number of shards; keeps per-handler breakers and V3/V9 state."""

    def __init__(
        self,
        handlers: Sequence[Handler],
        *,
        dlq: DeadLetterQueue,
        store: DedupeStore | None = None,
        settings: PipelineSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        allow_hold: bool = True,
        masker: Masker | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        if masker is not None and sealer is None:
            raise ValueError("a masking pipeline needs a sealer: dead letters must not carry unmasked bytes")
        names = [h.name for h in handlers]
        if len(set(names)) != len(names):
            raise ValueError(f"handler names must be unique: {names}")
        self.handlers = list(handlers)
        self.dlq = dlq
        self.store = store if store is not None else InMemoryDedupeStore()
        self.settings = settings or PipelineSettings()
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.sleep = sleep
        self.allow_hold = allow_hold
        self.masker = masker
        self.sealer = sealer
        self.verifier = Verifier()
        s = self.settings
        self.breakers = {
            h.name: CircuitBreaker(
                h.name,
                s.breaker_failures,
                s.breaker_recovery,
                s.breaker_trials,
                clock,
                (self._breaker_changed,),
            )
            for h in handlers
        }
        self.planners = {
            h.name: Planner(h.name, self.store, s.late_policy, s.reorder_window, clock) for h in handlers
        }
        #: poison records this pipeline dead-lettered recently (not written again on redelivery)
        self._recently_dead: OrderedDict[tuple[str | None, str | None, str, int | None, str], None] = (
            OrderedDict()
        )
        #: records held back by the reorder policy: (shard, handler) -> entries
        self._held: dict[tuple[str | None, str], list[_Entry]] = {}

    def _breaker_changed(self, breaker: CircuitBreaker, old: Any, new: Any) -> None:
        log.warning("circuit breaker %s: %s -> %s", breaker.name, old, new)
        self.metrics.gauge("breaker_open", 1.0 if new == "open" else 0.0, handler=breaker.name)

    # ------------------------------------------------------------------------------------
    def process(
        self,
        shard_id: str | None,
        records: Sequence[KinesisRecord],
        *,
        deadline: float | None = None,
        window_state: dict[str, Any] | None = None,
    ) -> BatchResult:
        """Run one shard's batch (records in sequence order) through every stage."""
        result = BatchResult(shard_id, records=len(records))
        self.metrics.observe("batch_size", len(records), shard=shard_id or "")
        newest = records[-1].approximate_arrival_timestamp if records else None
        if newest is not None:
            self.metrics.gauge(
                "iterator_age_ms", max(0.0, (time.time() - newest) * 1000), shard=shard_id or ""
            )
        # 1. deaggregate, decode, verify; poison to the DLQ
        with span("verify", shard=shard_id or "", records=len(records)):
            entries, halt_at = self._decode_batch(records, result)
        self.metrics.incr("records_in", len(records), stage="kinesis")
        self.metrics.incr("records_in", result.user_records, stage="user")
        # 2. hand the records to each handler, in order
        limit = halt_at if halt_at is not None else len(entries)
        if halt_at is not None:
            result.halted = True
        for handler in self.handlers:
            with span("handler", handler=handler.name, shard=shard_id or ""):
                stop = self._run_handler(handler, shard_id, entries, limit, result, deadline, window_state)
            if stop is not None and self.settings.stop_on_first_failure:
                limit = min(limit, stop)
        # 3. the checkpoint rule
        self._checkpoint(records, entries, limit, shard_id, result)
        return result

    def _set_aside(self, records: Sequence[KinesisRecord], entry: _Entry, result: BatchResult) -> bool:
        """Dead-letter a poison entry now; False when the DLQ write failed (the record stays unfinished).

        A batch halted after a poison record is delivered again (the worker re-reads it, the KCL
        processor keeps it, Lambda retries it): a record this pipeline already dead-lettered is
        not written a second time.
        """
        assert entry.poison is not None
        stage, error, record, failures = entry.poison
        kr = entry.user.parent if entry.user is not None else records[entry.k]
        sub = entry.user.sub_sequence_number if entry.user is not None else kr.sub_sequence_number
        key = (kr.stream_arn, kr.shard_id, kr.sequence_number, sub, stage)
        if key in self._recently_dead and kr.sequence_number:
            self._recently_dead.move_to_end(key)
            entry.dead = True
            return True
        if not self._dead_letter(result, stage, error, kr, entry.user, record, failures):
            return False
        entry.dead = True
        if kr.sequence_number:
            self._recently_dead[key] = None
            if len(self._recently_dead) > 10_000:
                self._recently_dead.popitem(last=False)
        return True

    def _decode_batch(
        self, records: Sequence[KinesisRecord], result: BatchResult
    ) -> tuple[list[_Entry], int | None]:
        """Stage 1: one entry per user record (or per undeaggregatable Kinesis record), and the
        entry index where verification says to halt (``verification_action = halt``)."""
        entries: list[_Entry] = []
        halt_at: int | None = None
        for k, kr in enumerate(records):
            if halt_at is not None:
                break
            try:
                users = deaggregate(kr)
            except DeaggregationError as exc:
                result.verification_failures.extend(self.verifier.aggregate(kr.position, exc))
                self.metrics.incr("verification_failures", check="V1")
                entry = _Entry(k, None, None)
                entry.poison = ("deaggregate", exc, None, None)
                entries.append(entry)
                if not self._set_aside(records, entry, result):
                    result.halt_reason = "the DLQ write failed"
                    if self.settings.stop_on_first_failure:
                        halt_at = len(entries) - 1
                continue
            if kr.data[:4] == KPL_MAGIC:
                self.verifier.aggregate(kr.position, None)
            for user in users:
                result.user_records += 1
                entry = _Entry(k, user, None)
                entries.append(entry)
                if not self._decode_and_verify(entry, result) and halt_at is None:
                    halt_at = len(entries) - 1
                elif entry.poison is not None and not self._set_aside(records, entry, result):
                    result.halt_reason = "the DLQ write failed"
                    if self.settings.stop_on_first_failure and halt_at is None:
                        halt_at = len(entries) - 1
        return entries, halt_at

    def _decode_and_verify(self, entry: _Entry, result: BatchResult) -> bool:
        """Decode and verify one user record; False when verification says to halt the shard."""
        user = entry.user
        assert user is not None
        try:
            record = decode(user)
            failures = self.verifier.verify(record)
        except PoisonRecordError as exc:
            self.metrics.incr("decode_errors", error=type(exc).__name__)
            entry.poison = ("decode", exc, None, None)
            return True
        self.metrics.incr("records_verified", record_type=record.record_type.value)
        if failures:
            result.verification_failures.extend(failures)
            for f in failures:
                self.metrics.incr("verification_failures", check=f.check)
                log.warning("verification failed: %s at %s: %s", f.check, f.position.describe(), f.message)
            action = self.settings.verification_action
            if action is VerificationAction.HALT:
                result.halt_reason = f"verification failed ({failures[0].check}) and the action is halt"
                entry.record = record
                return False
            if action is VerificationAction.DEAD_LETTER:
                summary = "; ".join(f"{f.check}: {f.message}" for f in failures)
                entry.poison = ("verify", PoisonRecordError(summary, user.position), record, failures)
                return True
        if (
            isinstance(record, RevisionDetails)
            and self.settings.verification_action is not VerificationAction.DELIVER
        ):
            ba = record.block_address
            bad = self.verifier.failed_block(ba.strand_id, ba.sequence_no)
            if bad is not None:  # the revision passed, but its block summary failed: not authentic
                reason = (
                    f"its block {ba.sequence_no} failed {bad}: the block does not vouch for this revision"
                )
                if self.settings.verification_action is VerificationAction.HALT:
                    result.halt_reason = reason
                    entry.record = record
                    return False
                entry.poison = ("verify", PoisonRecordError(reason, user.position), record, [])
                return True
        if self.masker is not None:
            record.mask_with(self.masker)  # verified on the original bytes; handlers see masked data
        entry.record = record
        return True

    def _dead_letter(
        self,
        result: BatchResult,
        stage: str,
        exc: BaseException,
        kr: KinesisRecord,
        user: UserRecord | None,
        record: JournalRecord | None = None,
        failures: list[Failure] | None = None,
        *,
        handler: str | None = None,
        attempts: int = 1,
        first_failure_time: float | None = None,
    ) -> bool:
        """Write one envelope; False when the DLQ is unavailable (then the record must not finish)."""
        doc = record.document_id if isinstance(record, RevisionDetails) else None
        version = record.version if isinstance(record, RevisionDetails) else None
        seq = record.block_address.sequence_no if isinstance(record, RevisionDetails | BlockSummary) else None
        tb = "".join(traceback.format_exception(exc)) if exc.__traceback__ is not None else None
        letter = envelope_for(
            stage,
            exc,
            kr,
            user,
            handler=handler,
            traceback=tb,
            attempts=attempts,
            first_failure_time=first_failure_time,
            document_id=doc,
            version=version,
            block_sequence_no=seq,
            verification_failures=[f.as_dict() for f in failures or []],
        )
        if self.masker is not None and self.sealer is not None:
            letter = self._seal(letter, record)
        try:
            self.dlq.put(letter)
        except Exception as dlq_error:  # any failure to store it: the checkpoint must hold
            log.error("DLQ write failed for %s: %r", letter.position.describe(), dlq_error)
            self.metrics.incr("dlq_write_failures")
            return False
        result.dead_lettered += 1
        self.metrics.incr("dlq_writes", stage=stage, handler=handler or "")
        return True

    def _seal(self, letter: DeadLetter, record: JournalRecord | None) -> DeadLetter:
        """The envelope with its raw bytes encrypted, a masked copy of the document, scrubbed messages."""
        assert self.masker is not None and self.sealer is not None
        data = None
        if isinstance(record, RevisionDetails) and not record.is_deleted and not record.is_redacted:
            data = record.original_ion()["payload"]["revision"]["data"]
        sealed = seal_envelope(json.loads(letter.to_json()), self.masker, self.sealer, data)
        return DeadLetter.from_json(json.dumps(sealed))

    # --- handlers -----------------------------------------------------------------------
    def _run_handler(
        self,
        handler: Handler,
        shard_id: str | None,
        entries: list[_Entry],
        limit: int,
        result: BatchResult,
        deadline: float | None,
        window_state: dict[str, Any] | None,
    ) -> int | None:
        """Deliver to one handler; return the entry index where it halted, if it did."""
        name = handler.name
        held = self._held.pop((shard_id, name), [])
        wanted: list[_Entry] = list(held)
        for e in entries[:limit]:
            if e.record is not None and e.poison is None and not e.dead and handler.wants(e.record):
                wanted.append(e)
        if not wanted:
            return None
        planner = self.planners[name]
        try:
            plan = planner.plan([e.record for e in wanted], allow_hold=self.allow_hold)  # type: ignore[misc]
        except Exception as exc:  # the de-duplication store cannot be read: stop here, retry later
            log.error("de-duplication store failed for %s: %r", name, exc)
            for e in wanted:
                e.hstate[name] = "pending"
            if held:
                self._held[(shard_id, name)] = held
            result.halted, result.halt_reason = True, f"de-duplication store failed: {exc!r}"
            first = next((e for e in wanted if e in entries), None)
            return entries.index(first) if first is not None else 0
        for i, reason in plan.skipped.items():
            wanted[i].hstate[name] = "skip"
            if reason == "duplicate":
                result.duplicates += 1
                self.metrics.incr("dedupe_hits", handler=name)
            else:
                result.late += 1
                self.metrics.incr("late_revisions", handler=name, action="dropped")
        for i in plan.held:
            wanted[i].hstate[name] = "pending"
        if plan.held:
            self._held[(shard_id, name)] = [wanted[i] for i in plan.held]
            result.held += len(plan.held)
        order = [wanted[i] for i in plan.deliver]
        late = frozenset(j for j, i in enumerate(plan.deliver) if i in plan.late)
        if late:
            self.metrics.incr("late_revisions", len(late), handler=name, action="delivered")
        for e in order:
            e.hstate[name] = "pending"
        ctx = HandlerContext(
            handler=name,
            shard_id=shard_id,
            deadline=deadline,
            metrics=self.metrics,
            logger=logging.getLogger(f"qldbstream.handler.{name}"),
            window_state=window_state,
            late_indexes=late,
        )
        halted_at = self._deliver(handler, order, ctx, result)
        done = [e for e in order if e.hstate[name] == "done"]
        if done:
            try:
                self._flush(handler, ctx, deadline)
                planner.commit([e.record for e in done])  # type: ignore[misc]
            except _Halt as exc:
                for e in done:
                    e.hstate[name] = "pending"
                halted_at = 0 if halted_at is None else halted_at
                result.halted, result.halt_reason = True, exc.reason
            except Exception as exc:  # the store is unavailable: effects happened but are unrecorded
                log.error("de-duplication store failed for %s: %r", name, exc)
                for e in done:
                    e.hstate[name] = "pending"
                halted_at = 0 if halted_at is None else halted_at
                result.halted, result.halt_reason = True, f"de-duplication store failed: {exc!r}"
        result.delivered[name] = result.delivered.get(name, 0) + sum(e.hstate[name] == "done" for e in order)
        if halted_at is None:
            return None
        # the entry index (within this batch) of the first record this handler did not finish
        stuck = order[halted_at] if halted_at < len(order) else None
        if stuck is not None and stuck in entries:
            return entries.index(stuck)
        return 0

    def _deliver(
        self, handler: Handler, order: list[_Entry], ctx: HandlerContext, result: BatchResult
    ) -> int | None:
        """Deliver ``order`` with retries; returns the index in ``order`` where it halted."""
        name = handler.name
        breaker = self.breakers[name]
        retry = self.settings.retry
        pos, attempt, single = 0, 1, False
        first_failure: float | None = None
        retryable = getattr(handler, "retryable_errors", ())
        poison = getattr(handler, "poison_errors", ())
        while pos < len(order):
            if self._out_of_time(ctx.deadline):
                result.halted, result.halt_reason = True, "the invocation deadline is near"
                return pos
            if not breaker.allow():
                result.halted = True
                result.halt_reason = (
                    f"circuit breaker for {name} is open (retry in {breaker.retry_after():.0f}s)"
                )
                self.metrics.incr("breaker_rejections", handler=name)
                return pos if self.settings.stop_on_first_failure else None
            chunk = order[pos : pos + 1] if single else order[pos:]
            records = [e.record for e in chunk]
            started = self.clock()
            try:
                handler.handle_batch(records, _with_attempt(ctx, attempt, pos))  # type: ignore[arg-type]
            except BatchItemError as exc:
                failing, cause = pos + exc.index, exc.cause
            except Exception as exc:
                # Progress unknown. A transient error is about the sink: retry the same chunk.
                # Anything else may be one bad record: isolate it by going one record at a time.
                transient = classify(exc, retryable=retryable, poison=poison) is Disposition.RETRY_THEN_HALT
                if not single and len(chunk) > 1 and not transient:
                    single = True
                    continue
                failing, cause = pos, exc
            else:
                self.metrics.observe("handler_latency", self.clock() - started, handler=name)
                breaker.record_success()
                for e in chunk:
                    e.hstate[name] = "done"
                pos += len(chunk)
                attempt, first_failure = 1, None
                continue
            for e in order[pos:failing]:
                e.hstate[name] = "done"
            pos = failing
            first_failure = first_failure or time.time()
            disposition = classify(cause, retryable=retryable, poison=poison)
            entry = order[pos]
            log.warning(
                "handler %s failed on %s (attempt %d, %s): %r",
                name,
                entry.user.position.describe() if entry.user else "?",
                attempt,
                disposition,
                cause,
            )
            if disposition is Disposition.RETRY_THEN_HALT:
                breaker.record_failure()
            if disposition in (Disposition.RETRY_THEN_HALT, Disposition.RETRY_THEN_DEAD_LETTER):
                delay = retry.next_delay(attempt, self.clock(), self._usable_deadline(ctx.deadline))
                if delay is not None and breaker.state.value != "open":
                    result.retries += 1
                    self.metrics.incr("retries", handler=name)
                    self.sleep(delay)
                    attempt += 1
                    continue
                if disposition is Disposition.RETRY_THEN_HALT:
                    disposition = Disposition.HALT
                else:
                    disposition = Disposition.DEAD_LETTER
            if disposition is Disposition.HALT:
                result.halt_reason = f"{name} failed on a record and will retry later: {cause!r}"
                if self.settings.stop_on_first_failure:
                    result.halted = True
                    return pos
                pos += 1  # continue mode: leave it unfinished (the checkpoint stays), go on
                attempt, first_failure = 1, None
                continue
            # dead-letter this record for this handler, then go on
            assert entry.user is not None and entry.record is not None
            kr = entry.user.parent
            if not self._dead_letter(
                result,
                "handler",
                cause,
                kr,
                entry.user,
                entry.record,
                handler=name,
                attempts=attempt,
                first_failure_time=first_failure,
            ):
                result.halted, result.halt_reason = True, "the DLQ write failed"
                return pos
            entry.hstate[name] = "dlq"
            pos += 1
            attempt, first_failure = 1, None
        return None

    def _flush(self, handler: Handler, ctx: HandlerContext, deadline: float | None) -> None:
        attempt = 1
        while True:
            try:
                handler.flush(ctx)
                return
            except Exception as exc:
                delay = self.settings.retry.next_delay(attempt, self.clock(), self._usable_deadline(deadline))
                log.warning("flush of %s failed (attempt %d): %r", handler.name, attempt, exc)
                if delay is None:
                    raise _Halt(f"flush of {handler.name} failed: {exc!r}") from exc
                self.sleep(delay)
                attempt += 1

    def _usable_deadline(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self.settings.deadline_margin

    def _out_of_time(self, deadline: float | None) -> bool:
        return deadline is not None and self.clock() >= deadline - self.settings.deadline_margin

    # --- checkpoint ---------------------------------------------------------------------
    def _checkpoint(
        self,
        records: Sequence[KinesisRecord],
        entries: list[_Entry],
        limit: int,
        shard_id: str | None,
        result: BatchResult,
    ) -> None:
        """The last user record of the finished prefix, and the first unfinished Kinesis record."""
        by_k: dict[int, list[tuple[int, _Entry]]] = {}
        for i, e in enumerate(entries):
            by_k.setdefault(e.k, []).append((i, e))
        stop_mode = self.settings.stop_on_first_failure
        checkpoint: tuple[str, int] | None = None
        for k, kr in enumerate(records):
            unfinished = False
            for i, e in by_k.get(k, []):
                if (stop_mode and i >= limit) or not e.finished():
                    unfinished = True
                    break
                if e.user is not None:
                    checkpoint = (e.user.sequence_number, e.user.sub_sequence_number)
                else:  # a dead-lettered Kinesis record that could not be deaggregated
                    checkpoint = (kr.sequence_number, kr.sub_sequence_number or 0)
            if unfinished:
                result.first_unfinished = kr
                break
            result.finished += 1
        if any(key[0] == shard_id for key in self._held):
            checkpoint = None  # an earlier record is still held back (reorder policy): do not move
        result.checkpoint = checkpoint
