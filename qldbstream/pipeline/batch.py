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
``sleep`` are passed in. With a :class:`~qldbstream.core.masking.Masker`, every record is verified on
its original bytes and then masked (handlers see masked ``data``), and dead letters are sealed
(the raw bytes encrypted, a masked copy for humans; :func:`~qldbstream.core.masking.seal_envelope`).
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext
from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.admit import Admission
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import BlockSummary, ControlRecord, JournalRecord, RevisionDetails, decode
from qldbstream.core.dedupe import DedupeStore, LatePolicy, Planner
from qldbstream.core.entries import Entry, UnverifiableRecordError
from qldbstream.core.errors import DeaggregationError, PoisonRecordError
from qldbstream.core.gate import OWN_BLOCK_CHECKS, Delivery
from qldbstream.core.gate_store import GateStore
from qldbstream.core.masking import Masker
from qldbstream.core.masking_dlq import Sealer, seal_envelope
from qldbstream.core.order import JournalOrder
from qldbstream.core.records import KinesisRecord, UserRecord
from qldbstream.core.verify import Failure, Verifier
from qldbstream.io.tracing import span
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue, envelope_for
from qldbstream.pipeline.reliability import CircuitBreaker, Disposition, RetryPolicy, classify, retry
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore

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
    #: what a revision older than one already delivered gets: delivered with ``ctx.late`` by default
    #: (a handler that wants only the newest version declares ``late_policy = LatePolicy.DROP``)
    late_policy: LatePolicy = LatePolicy.DELIVER_LATE
    reorder_window: float = 30.0
    #: ``verified``: every check that covers a record passed; ``chain-confirmed``: and the next
    #: block's link confirmed its block (see :mod:`qldbstream.core.gate`)
    delivery: Delivery = Delivery.VERIFIED
    #: seconds a record may wait for its block summary (or the confirming link) before it is
    #: dead-lettered as unverifiable
    max_wait: float = 600.0
    #: records parked in memory at most (beyond: the shard halts and is read again later)
    max_parked: int = 100_000
    #: journal order (a pipeline built with ``journal_order``): seconds a block waits for its
    #: predecessor before the gap is given up (qldbstream.core.order)
    gap_timeout: float = 30.0
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
    #: records parked in this batch (waiting for their block summary or its confirming link)
    parked: int = 0
    #: parked records of earlier batches or other shards that this batch delivered or dead-lettered
    released: int = 0
    #: the first Kinesis record with a record parked in memory (a runtime that cannot keep a
    #: checkpoint behind it, like Lambda, must report it as unfinished)
    first_parked: KinesisRecord | None = None
    #: other shards whose checkpoint could move because a record they had parked in memory is done
    other_checkpoints: dict[str | None, tuple[str, int]] = field(default_factory=dict)
    #: ``process(..., stop_at_completed=True)``: the Kinesis record holding CONTROL ``COMPLETED``
    #: (the end of a bounded QLDB stream); the batch stopped there (``records`` counts up to it)
    completed: KinesisRecord | None = None


def _late_policy(handler: Handler, default: LatePolicy) -> LatePolicy:
    """A handler may declare its own policy (e.g. a state mirror that wants only the newest version)."""
    own = getattr(handler, "late_policy", None)
    return default if own is None else LatePolicy(own)


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
        gate_store: GateStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        journal_order: bool = False,
        anchors: Mapping[tuple[str, int], bytes] | None = None,
    ) -> None:
        if masker is not None and sealer is None:
            raise ValueError("a masking pipeline needs a sealer: dead letters must not carry unmasked bytes")
        names = [h.name for h in handlers]
        if len(set(names)) != len(names):
            raise ValueError(f"handler names must be unique: {names}")
        self.handlers = list(handlers)
        self.dlq = dlq
        self.store = store if store is not None else InMemoryDedupeStore(clock=wall_clock)
        self.settings = settings or PipelineSettings()
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.sleep = sleep
        #: epoch seconds: iterator age, dead letters' failure times
        self.wall_clock = wall_clock
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
            h.name: Planner(h.name, self.store, _late_policy(h, s.late_policy), s.reorder_window, clock=clock)
            for h in handlers
        }
        #: poison records this pipeline dead-lettered recently (not written again on redelivery)
        self._recently_dead: OrderedDict[tuple[str | None, str | None, str, int | None, str], None] = (
            OrderedDict()
        )
        #: records held back by the reorder policy: (shard, handler) -> entries
        self._held: dict[tuple[str | None, str], list[Entry]] = {}
        #: the delivery gate: block verdicts and parked records (in memory unless a store is given)
        self.gate_store = gate_store if gate_store is not None else InMemoryGateStore()
        self.admission = Admission(
            self.gate_store,
            self.verifier,
            delivery=s.delivery,
            max_wait=s.max_wait,
            wall_clock=wall_clock,
            masker=masker,
            anchors=anchors,
            order=JournalOrder(clock, s.gap_timeout)
            if journal_order and not self.gate_store.durable
            else None,
        )
        self._next_sweep = 0.0
        self._drain = False
        #: who claims and locks in a shared de-duplication store: the shard being processed (one
        #: processor per shard: Lambda, the KCL), or - when one reader merges every shard in journal
        #: order (the worker) - that reader, whichever shard's call delivers a record
        self._claimant = "journal-order reader" if journal_order else None
        self._guarantee = (
            "observe-only" if s.verification_action is VerificationAction.DELIVER else s.delivery.value
        )

    def waiting(self, shard_id: str | None) -> bool:
        """Whether records of ``shard_id`` wait inside this pipeline (parked in memory or held back
        by the reorder policy): the shard's checkpoint stays behind them, and it must not end."""
        return bool(self.admission.caps.caps.get(shard_id)) or any(k[0] == shard_id for k in self._held)

    @property
    def gaps(self) -> list[tuple[str, int, int]]:
        """Journal order: (strand, first, last) of each run of blocks given up as missing."""
        return [] if self.admission.order is None else list(self.admission.order.gaps)

    @property
    def watermark(self) -> float:
        """Journal order: every shard has been read up to this arrival time (the worker sets it)."""
        order = self.admission.order
        return float("-inf") if order is None else order.watermark

    @watermark.setter
    def watermark(self, value: float) -> None:
        if self.admission.order is not None:
            self.admission.order.watermark = value

    def drain(self) -> BatchResult:
        """End of input: every record still parked is decided now - delivered if its block is
        decided by now, else dead-lettered as unverifiable (its block summary, or the successor
        that would confirm it, is not in the input). Returns what happened (other_checkpoints)."""
        if self.gate_store.durable:  # other processes' records wait there too: the maximum wait decides
            return BatchResult(None)
        self._drain = True
        try:
            return self.process(None, [])
        finally:
            self._drain = False

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
        admitted: bool = False,
        stop_at_completed: bool = False,
    ) -> BatchResult:
        """Run one shard's batch (records in sequence order) through every stage.

        ``stop_at_completed``: the batch ends at a CONTROL ``COMPLETED`` record (``result.completed``;
        what follows it on the shard is not part of this QLDB stream, and is not processed).

        ``admitted``: the records passed the delivery gate before and their blocks are not in the
        input (a replay of a handler's dead letters): every check of the record itself runs again,
        the block-level ones cannot and are not asked for.
        """
        result = BatchResult(shard_id, records=len(records))
        self.metrics.observe("batch_size", len(records), shard=shard_id or "")
        newest = records[-1].approximate_arrival_timestamp if records else None
        if newest is not None:
            self.metrics.gauge(
                "iterator_age_ms", max(0.0, (self.wall_clock() - newest) * 1000), shard=shard_id or ""
            )
        # 1. deaggregate, decode, verify; poison to the DLQ
        with span("verify", shard=shard_id or "", records=len(records)):
            entries, halt_at = self._decode_batch(records, result, stop_at_completed)
        if result.completed is not None:  # the rest of the batch is past the stream's end
            records = records[: next(k for k, r in enumerate(records) if r is result.completed) + 1]
            result.records = len(records)
        self.metrics.incr("records_in", len(records), stage="kinesis")
        self.metrics.incr("records_in", result.user_records, stage="user")
        limit = halt_at if halt_at is not None else len(entries)
        if halt_at is not None:
            result.halted = True
        # 2. the delivery gate: admit, park or reject; release what this batch's blocks decide
        if self.settings.verification_action is not VerificationAction.DELIVER and not admitted:
            with span("admit", shard=shard_id or ""):
                entries, limit = self._admit(shard_id, records, entries, limit, result)
        # 3. hand the records to each handler, in order
        held_before = [(key[0], e) for key, held in self._held.items() for e in held]
        for handler in self.handlers:
            with span("handler", handler=handler.name, shard=shard_id or ""):
                stop = self._run_handler(handler, shard_id, entries, limit, result, deadline, window_state)
            if stop is not None and self.settings.stop_on_first_failure:
                limit = min(limit, stop)
        # 4. the checkpoint rule
        lifted, released = self._unpark_finished(entries, limit, result)
        for shard, e in held_before:  # released by the reorder policy (or by time) since
            done = "held" not in e.hstate.values() and e.user is not None
            if done and self.admission.caps.remove(shard, _held_cap(e.user)):  # type: ignore[arg-type]
                lifted.add(shard)
        self._checkpoint(records, entries, limit, shard_id, result, released)
        lifted |= self.admission.lifted
        self.admission.lifted = set()
        if lifted:
            caps = self.admission.caps
            for other in lifted - {shard_id}:
                cp = caps.effective(other)
                if cp is not None:
                    result.other_checkpoints[other] = cp
        return result

    # --- the delivery gate ---------------------------------------------------------------
    def _admit(
        self,
        shard_id: str | None,
        records: Sequence[KinesisRecord],
        entries: list[Entry],
        limit: int,
        result: BatchResult,
    ) -> tuple[list[Entry], int]:
        """Stage 2: judge every record; returns the entries (released ones included) and the limit."""
        admission = self.admission
        try:
            before = len(entries)
            entries = admission.admit(entries, limit, shard_id)
            limit += len(entries) - before
            ordered = admission.ordered_releases(drain=self._drain)
            if ordered:
                entries = ordered + entries
                limit += len(ordered)
            now = self.clock()
            if now >= self._next_sweep or self._drain:
                self._next_sweep = now + min(10.0, self.settings.max_wait / 10)
                admission.let_go_of_old_holds(everything=self._drain)
                expired = admission.expired(10_000 if self._drain else 100, everything=self._drain)
                if expired:
                    self.metrics.incr("parked_expired", len(expired))
                    entries = expired + entries
                    limit += len(expired)
        except Exception as exc:  # the gate's store cannot be read or written: stop here, retry later
            if isinstance(exc, PoisonRecordError):
                raise
            log.error("the delivery gate's store failed: %r", exc)
            result.halted, result.halt_reason = True, f"the delivery gate's store failed: {exc!r}"
            return entries, 0
        halt_action = self.settings.verification_action is VerificationAction.HALT
        for i, e in enumerate(entries[:limit]):
            if e.parked is not None:
                result.parked += 1
            if e.foreign:
                result.released += 1
            if e.poison is None or e.dead:
                continue
            stage, error, _, failures = e.poison
            if stage == "verify" and failures and (isinstance(error, UnverifiableRecordError) or e.foreign):
                result.verification_failures.extend(failures)
                for f in failures:
                    self.metrics.incr("verification_failures", check=f.check)
                    log.warning("not delivered: %s at %s: %s", f.check, f.position.describe(), f.message)
            if halt_action and stage == "verify":
                result.halted, result.halt_reason = (
                    True,
                    f"verification failed ({error}) and the action is halt",
                )
                return entries, i
            if not self._set_aside(records, e, result):
                result.halt_reason = "the DLQ write failed"
                if self.settings.stop_on_first_failure:
                    result.halted = True
                    return entries, i
        if result.parked:
            self.metrics.incr("records_parked", result.parked)
        if not self.gate_store.durable and admission.caps.count() > self.settings.max_parked:
            first = next(
                (i for i, e in enumerate(entries[:limit]) if e.parked is not None and not e.foreign), None
            )
            if first is not None:
                for e in entries[first:limit]:
                    if e.parked is not None:
                        self.gate_store.unpark(e.parked.key, [e.parked.id])
                        e.parked = None
                result.halted = True
                result.halt_reason = (
                    f"more than {self.settings.max_parked} records wait for their block summaries in memory"
                )
                return entries, first
        return entries, limit

    def _unpark_finished(
        self, entries: list[Entry], limit: int, result: BatchResult
    ) -> tuple[set[str | None], set[str]]:
        """Released records that are done (or dead-lettered) leave the store; returns the shards
        whose in-memory caps were lifted, and the ids of the records that left."""
        lifted: set[str | None] = set()
        released: set[str] = set()
        stop_mode = self.settings.stop_on_first_failure
        by_key: dict[tuple[str, int], list[str]] = {}
        for i, e in enumerate(entries):
            parked = e.release
            if parked is None or (stop_mode and i >= limit) or not e.settled():
                continue
            by_key.setdefault(parked.key, []).append(parked.id)
            released.add(parked.id)
            if self.admission.caps.remove(parked.shard_id, parked.id):
                lifted.add(parked.shard_id)
        for key, ids in by_key.items():
            try:
                self.gate_store.unpark(key, ids)
            except Exception as exc:  # delivered and still parked: delivered again later (de-duplicated)
                log.warning("could not remove delivered records from the gate's store: %r", exc)
        return lifted, released

    def _set_aside(self, records: Sequence[KinesisRecord], entry: Entry, result: BatchResult) -> bool:
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
        self, records: Sequence[KinesisRecord], result: BatchResult, stop_at_completed: bool = False
    ) -> tuple[list[Entry], int | None]:
        """Stage 1: one entry per user record (or per undeaggregatable Kinesis record), and the
        entry index where verification says to halt (``verification_action = halt``)."""
        entries: list[Entry] = []
        halt_at: int | None = None
        for k, kr in enumerate(records):
            if halt_at is not None or result.completed is not None:
                break
            try:
                users = deaggregate(kr)
            except DeaggregationError as exc:
                result.verification_failures.extend(self.verifier.aggregate(kr.position, exc))
                self.metrics.incr("verification_failures", check="V1")
                entry = Entry(k, None, None)
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
                entry = Entry(k, user, None)
                entries.append(entry)
                if not self._decode_and_verify(entry, result) and halt_at is None:
                    halt_at = len(entries) - 1
                record = entry.record
                if (
                    stop_at_completed
                    and isinstance(record, ControlRecord)
                    and record.control_record_type == "COMPLETED"
                ):
                    result.completed = kr
                elif entry.poison is not None and not self._set_aside(records, entry, result):
                    result.halt_reason = "the DLQ write failed"
                    if self.settings.stop_on_first_failure and halt_at is None:
                        halt_at = len(entries) - 1
        return entries, halt_at

    def _decode_and_verify(self, entry: Entry, result: BatchResult) -> bool:
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
            # A block summary is untrustworthy when its own checks fail. A V3 pair failing when the
            # block arrives after its revision is the revision's fault (the gate rejects it), and a
            # broken V9 link cannot say which of its two blocks was forged (see qldbstream.core.gate).
            own = (
                failures
                if not isinstance(record, BlockSummary)
                else [f for f in failures if f.check in OWN_BLOCK_CHECKS]
            )
            if own and action is VerificationAction.HALT:
                result.halt_reason = f"verification failed ({own[0].check}) and the action is halt"
                entry.record = record
                return False
            if own and action is VerificationAction.DEAD_LETTER:
                summary = "; ".join(f"{f.check}: {f.message}" for f in failures)
                entry.poison = ("verify", PoisonRecordError(summary, user.position), record, failures)
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
            now=self.wall_clock(),
        )
        try:  # sealing (KMS) inside: a key that cannot be reached holds the checkpoint too
            if self.masker is not None and self.sealer is not None:
                letter = self._seal(letter, record)
            self.dlq.put(letter)
        except Exception as dlq_error:  # any failure to store it: the checkpoint must hold
            log.error("DLQ write failed for %s: %r", letter.position.describe(), dlq_error)
            self.metrics.incr("dlq_write_failures")
            return False
        result.dead_lettered += 1
        self.metrics.incr("dlq_writes", stage=stage, handler=handler or "")
        return True

    def run_hook(
        self,
        handler: Handler,
        call: Callable[[], None],
        *,
        deadline: float | None,
        what: str,
        shard: str | None,
    ) -> None:
        """A handler hook outside record delivery (a tumbling window closing), retried with the
        pipeline's retry policy while the deadline allows; raises the last error when no retry is
        left (the runtime then fails the invocation, and Lambda retries it)."""

        def on_failure(exc: Exception, attempt: int, delay: float | None) -> None:
            log.warning(
                "%s of %s failed (attempt %d) for shard %s: %r",
                what,
                handler.name,
                attempt,
                shard,
                exc,
                extra={"shardId": shard, "handler": handler.name},
            )
            if delay is None:
                self.metrics.incr("hook_failures", handler=handler.name, hook=what)

        retry(
            call,
            self.settings.retry,
            retryable=lambda exc: True,
            sleep=self.sleep,
            clock=self.clock,
            deadline=self._usable_deadline(deadline),
            on_failure=on_failure,
        )

    def dead_letter(self, stage: str, error: BaseException, record: KinesisRecord) -> bool:
        """Dead-letter a record that never reached the pipeline's stages (a runtime's malformed input,
        e.g. a Lambda event item without base64 data), as every dead letter is: sealed when masking
        is on. False when the DLQ write failed: the record stays unfinished."""
        return self._dead_letter(BatchResult(record.shard_id), stage, error, record, None)

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
        entries: list[Entry],
        limit: int,
        result: BatchResult,
        deadline: float | None,
        window_state: dict[str, Any] | None,
    ) -> int | None:
        """Deliver to one handler; return the entry index where it halted, if it did."""
        name = handler.name
        held = self._held.pop((shard_id, name), [])
        wanted: list[Entry] = list(held)
        for e in entries[:limit]:
            if (
                e.record is not None
                and e.poison is None
                and not e.dead
                and e.parked is None
                and handler.wants(e.record)
            ):
                wanted.append(e)
        if not wanted:
            return None
        planner = self.planners[name]
        try:
            claimant = self._claimant or f"shard|{shard_id or ''}"
            owners = [(e.copy(), claimant) for e in wanted] if planner.claims else None
            plan = planner.plan(
                [e.record for e in wanted],  # type: ignore[misc]
                allow_hold=self.allow_hold,
                owners=owners,
                locker=claimant if planner.claims else "",
            )
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
        for i in plan.busy:
            wanted[i].hstate[name] = "busy"  # another process delivers it: it stays in the gate's store
        waiting = [wanted[i] for i in plan.waiting]  # behind another shard's delivery of its document
        for e in waiting:
            e.hstate[name] = "pending"
        for i in plan.held:
            wanted[i].hstate[name] = "held"  # finished for now: its shard's checkpoint waits (a cap)
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
            delivery=self._guarantee,
            clock=self.clock,
        )
        halted_at = self._deliver(handler, order, ctx, result)
        done = [e for e in order if e.hstate[name] == "done"]
        if done:
            try:
                self._flush(handler, ctx, deadline)
                # documents let go before the done marks: a crash in between means a redelivery
                # (claimed again by the same shard), never a document left locked behind done work
                self._unlock(planner, plan.locks, order, name)
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
        else:
            self._unlock(planner, plan.locks, order, name)
        result.delivered[name] = result.delivered.get(name, 0) + sum(e.hstate[name] == "done" for e in order)
        if halted_at is None and waiting:
            halted_at = len(order)
            result.halted = True
            result.halt_reason = "another shard is delivering an earlier version of a document; trying again"
        if halted_at is None:
            return None
        # the entry index (within this batch) of the first record this handler did not finish
        stuck = order[halted_at] if halted_at < len(order) else (waiting[0] if waiting else None)
        if stuck is not None and stuck in entries:
            return entries.index(stuck)
        return 0

    @staticmethod
    def _unlock(planner: Planner, locks: dict[str, str], order: list[Entry], name: str) -> None:
        """Let go of the documents (locked by their claims) whose delivered revisions are finished."""
        if not locks:
            return
        unfinished = {
            r.document_id
            for e in order
            if e.hstate[name] == "pending" and isinstance(r := e.record, RevisionDetails)
        }
        try:
            planner.unlock({doc: who for doc, who in locks.items() if doc not in unfinished})
        except Exception as exc:  # they stay locked until their time passes: later, not lost
            log.warning("could not unlock documents in the de-duplication store for %s: %r", name, exc)

    def _deliver(
        self, handler: Handler, order: list[Entry], ctx: HandlerContext, result: BatchResult
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
            first_failure = first_failure or self.wall_clock()
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
            try:  # first let go of its claim: a replay of the dead letter must be able to claim it
                self.planners[name].unclaim([entry.record], [entry.copy()])
            except Exception as exc:
                log.error("de-duplication store failed for %s: %r", name, exc)
                result.halted, result.halt_reason = True, f"de-duplication store failed: {exc!r}"
                return pos
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
        def on_failure(exc: Exception, attempt: int, delay: float | None) -> None:
            log.warning("flush of %s failed (attempt %d): %r", handler.name, attempt, exc)

        retry(
            lambda: handler.flush(ctx),
            self.settings.retry,
            retryable=lambda exc: True,
            sleep=self.sleep,
            clock=self.clock,
            deadline=self._usable_deadline(deadline),
            on_failure=on_failure,
            give_up=lambda exc, attempts: _Halt(f"flush of {handler.name} failed: {exc!r}"),
        )

    def _usable_deadline(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self.settings.deadline_margin

    def _out_of_time(self, deadline: float | None) -> bool:
        return deadline is not None and self.clock() >= deadline - self.settings.deadline_margin

    # --- checkpoint ---------------------------------------------------------------------
    def _checkpoint(
        self,
        records: Sequence[KinesisRecord],
        entries: list[Entry],
        limit: int,
        shard_id: str | None,
        result: BatchResult,
        released: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """The last user record of the finished prefix, and the first unfinished Kinesis record.

        ``released``: records parked in this batch and already delivered from elsewhere in it."""
        by_k: dict[int, list[tuple[int, Entry]]] = {}
        for i, e in enumerate(entries):
            by_k.setdefault(e.k, []).append((i, e))
        for group in by_k.values():  # the gate may have moved a record after what released it
            group.sort(key=lambda ie: (ie[1].foreign, ie[1].user.sub_sequence_number if ie[1].user else 0))
        stop_mode = self.settings.stop_on_first_failure
        caps = self.admission.caps
        in_memory = not self.gate_store.durable
        checkpoint: tuple[str, int] | None = None
        for k, kr in enumerate(records):
            unfinished = False
            for i, e in by_k.get(k, []):
                if (stop_mode and i >= limit) or not e.finished():
                    unfinished = True
                    break
                if e.foreign:
                    continue  # a record of another shard or batch that this one released
                if e.user is not None:
                    # the checkpoint just before this record: this batch's, or the shard's if it is
                    # before the record (else unknown: the shard does not checkpoint until released)
                    here = _position(e.user)
                    before = checkpoint
                    if before is None:
                        latest = caps.latest.get(shard_id)
                        before = latest if latest is not None and _key(latest) < here else None
                    if "held" in e.hstate.values():  # the reorder policy holds it back
                        caps.add(shard_id, _held_cap(e.user), here, before)
                    if in_memory and e.holds is not None and self.admission.holding(e.holds):
                        cap = f"block|{e.user.sequence_number}|{e.user.sub_sequence_number}"
                        caps.add(shard_id, cap, here, before)
                        self.admission.hold(e.holds, shard_id, cap)
                    if in_memory and e.parked is not None and e.parked.id not in released:
                        caps.add(shard_id, e.parked.id, here, before)
                        if result.first_parked is None:
                            result.first_parked = kr
                    checkpoint = (e.user.sequence_number, e.user.sub_sequence_number)
                else:  # a dead-lettered Kinesis record that could not be deaggregated
                    checkpoint = (kr.sequence_number, kr.sub_sequence_number or 0)
            if unfinished:
                result.first_unfinished = kr
                if not stop_mode and not result.halted:
                    # continue mode delivered what came after, but this record is not done: the
                    # runtime must read it again from the checkpoint (never pass it)
                    result.halted = True
                    result.halt_reason = result.halt_reason or "a record is not finished"
                break
            result.finished += 1
        if checkpoint is not None:
            caps.latest[shard_id] = checkpoint
        if in_memory or caps.caps.get(shard_id):
            checkpoint = caps.effective(shard_id)
        result.checkpoint = checkpoint


def _key(cp: tuple[str, int]) -> tuple[int, int]:
    return (int(cp[0] or 0), cp[1])


def _held_cap(user: UserRecord) -> str:
    return f"held|{user.sequence_number}|{user.sub_sequence_number}"


def _position(user: UserRecord) -> tuple[int, int]:
    return (int(user.sequence_number or 0), user.sub_sequence_number)
