"""The pipeline: one shard's batch of Kinesis records in, per-record outcomes and a checkpoint out.

    deaggregate → decode → verify → admit (the delivery gate) → plan (dedupe/order) → deliver to
    each handler → flush → checkpoint

:meth:`Pipeline.process` is that flow, one stage per module: :mod:`~qldbstream.pipeline.decode_stage`
(deaggregate, decode, verify), :mod:`~qldbstream.pipeline.gate_stage` (admit, park, release),
:mod:`~qldbstream.pipeline.delivery` (plan, deliver with retries, the breaker, flush),
:mod:`~qldbstream.pipeline.checkpoint_rule`; :mod:`~qldbstream.pipeline.dead_letters` writes
every dead letter. Every runtime (Lambda, the standalone worker, the KCL record processor) is a
thin adapter over :meth:`Pipeline.process`, and all of them obey the one checkpoint rule it computes:

    **never advance past a record that is neither done nor dead-lettered.**

A user record is *finished* when it was dead-lettered, or when every handler that wants it has
processed it (or skipped it as a duplicate or a late revision, or dead-lettered it). The
checkpoint is the last user record of the batch's finished prefix; Lambda reports the first
unfinished Kinesis record instead (``batchItemFailures``).

The pipeline does no I/O of its own: handlers, the de-duplication store, the DLQ, the clock,
``sleep``, the tracer and the rule that says which outside (e.g. AWS) errors are transient are
passed in (:class:`qldbstream.app.assembly.App` passes the edges' ones). With a
:class:`~qldbstream.core.masking.Masker`, every record is verified on its original bytes and
then masked (handlers see masked ``data``), and dead letters are sealed (the raw bytes
encrypted, a masked copy for humans; :func:`~qldbstream.core.masking_dlq.seal_envelope`).
By default a failure stops the shard at that record (order is kept);
with ``stop_on_first_failure=False`` later records are still processed, but the checkpoint
stays at the first unfinished one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from qldbstream.api.handler import Handler
from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.admit import Admission
from qldbstream.core.dedupe import DedupeStore, Planner
from qldbstream.core.entries import Entry
from qldbstream.core.gate_store import GateStore
from qldbstream.core.masking import Masker
from qldbstream.core.masking_dlq import Sealer
from qldbstream.core.order import JournalOrder
from qldbstream.core.records import KinesisRecord
from qldbstream.core.verify import Verifier
from qldbstream.pipeline.checkpoint_rule import compute_checkpoint, held_cap
from qldbstream.pipeline.dead_letters import write_dead_letter
from qldbstream.pipeline.decode_stage import decode_batch
from qldbstream.pipeline.delivery import late_policy, run_handler, usable_deadline
from qldbstream.pipeline.dlq import DeadLetterQueue
from qldbstream.pipeline.gate_stage import admit, unpark_finished
from qldbstream.pipeline.reliability import CircuitBreaker, TransientCheck, retry
from qldbstream.pipeline.result import BatchResult
from qldbstream.pipeline.settings import PipelineSettings, VerificationAction
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore

__all__ = ["BatchResult", "Pipeline", "PipelineSettings", "Tracer", "VerificationAction", "no_span"]

log = logging.getLogger("qldbstream.pipeline")

#: ``tracer("verify", shard=..., records=...)`` - a context manager around one stage (a span)
Tracer = Callable[..., AbstractContextManager[Any]]


def no_span(name: str, **attributes: Any) -> AbstractContextManager[None]:
    """The default :data:`Tracer`: no spans (``qldbstream.io.tracing.span`` opens OpenTelemetry ones)."""
    return nullcontext()


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
        tracer: Tracer = no_span,
        transient: TransientCheck | None = None,
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
        #: opens a span around each stage and handler call (no spans by default)
        self.tracer = tracer
        #: which outside errors (a library's, a cloud's) a handler raises are transient: retried, then
        #: the shard halts; None: only qldbstream's own (RetryableError, connection and timeout errors)
        self.transient = transient
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
            h.name: Planner(h.name, self.store, late_policy(h, s.late_policy), s.reorder_window, clock=clock)
            for h in handlers
        }
        #: poison records this pipeline dead-lettered recently (not written again on redelivery)
        self.recently_dead: OrderedDict[tuple[str | None, str | None, str, int | None, str], None] = (
            OrderedDict()
        )
        #: records held back by the reorder policy: (shard, handler) -> entries
        self.held: dict[tuple[str | None, str], list[Entry]] = {}
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
        self.next_sweep = 0.0
        self.draining = False
        #: who claims and locks in a shared de-duplication store: the shard being processed (one
        #: processor per shard: Lambda, the KCL), or - when one reader merges every shard in journal
        #: order (the worker) - that reader, whichever shard's call delivers a record
        self.claimant = "journal-order reader" if journal_order else None
        self.guarantee = (
            "observe-only" if s.verification_action is VerificationAction.DELIVER else s.delivery.value
        )

    def waiting(self, shard_id: str | None) -> bool:
        """Whether records of ``shard_id`` wait inside this pipeline (parked in memory or held back
        by the reorder policy): the shard's checkpoint stays behind them, and it must not end."""
        return bool(self.admission.caps.caps.get(shard_id)) or any(k[0] == shard_id for k in self.held)

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
        self.draining = True
        try:
            return self.process(None, [])
        finally:
            self.draining = False

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
        with self.tracer("verify", shard=shard_id or "", records=len(records)):
            entries, halt_at = decode_batch(self, records, result, stop_at_completed)
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
            with self.tracer("admit", shard=shard_id or ""):
                entries, limit = admit(self, shard_id, records, entries, limit, result)
        # 3. hand the records to each handler, in order
        held_before = [(key[0], e) for key, held in self.held.items() for e in held]
        for handler in self.handlers:
            with self.tracer("handler", handler=handler.name, shard=shard_id or ""):
                stop = run_handler(self, handler, shard_id, entries, limit, result, deadline, window_state)
            if stop is not None and self.settings.stop_on_first_failure:
                limit = min(limit, stop)
        # 4. the checkpoint rule; first, revisions now finished let their block summaries' holds go
        self.admission.finished(entries[:limit])
        if held_before:
            self.admission.finished(e for _, e in held_before)
        lifted, released = unpark_finished(self, entries, limit, result)
        for shard, e in held_before:  # released by the reorder policy (or by time) since
            done = "held" not in e.hstate.values() and e.user is not None
            if done and self.admission.caps.remove(shard, held_cap(e.user)):  # type: ignore[arg-type]
                lifted.add(shard)
        compute_checkpoint(self, records, entries, limit, shard_id, result, released)
        lifted |= self.admission.lifted
        self.admission.lifted = set()
        if lifted:
            caps = self.admission.caps
            for other in lifted - {shard_id}:
                cp = caps.effective(other)
                if cp is not None:
                    result.other_checkpoints[other] = cp
        return result

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
            deadline=usable_deadline(self.settings, deadline),
            on_failure=on_failure,
        )

    def dead_letter(self, stage: str, error: BaseException, record: KinesisRecord) -> bool:
        """Dead-letter a record that never reached the pipeline's stages (a runtime's malformed input,
        e.g. a Lambda event item without base64 data), as every dead letter is: sealed when masking
        is on. False when the DLQ write failed: the record stays unfinished."""
        return write_dead_letter(self, BatchResult(record.shard_id), stage, error, record, None)
