"""Stage 3 of the pipeline: hand the records to one handler, in order, with retries.

:func:`run_handler` plans one handler's share of a batch with its de-duplication
:class:`~qldbstream.core.dedupe.Planner` (duplicates and late revisions skipped, records held
back by the reorder policy, documents claimed), delivers it (:func:`deliver`), flushes the
handler and records what is done. :func:`deliver` is the per-record state machine: the
handler's circuit breaker, retries with backoff, one record at a time when a batch fails for an
unknown reason (to find the one bad record), and a handler's failures classified
(:func:`~qldbstream.pipeline.reliability.classify`, with the pipeline's transient-error rule):
retried, then the shard halts at the record, or it is dead-lettered for this handler.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.dedupe import LatePolicy, Planner
from qldbstream.core.entries import Entry
from qldbstream.pipeline.dead_letters import write_dead_letter
from qldbstream.pipeline.reliability import Disposition, classify, retry
from qldbstream.pipeline.result import BatchResult
from qldbstream.pipeline.settings import PipelineSettings

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["deliver", "flush", "late_policy", "out_of_time", "run_handler", "unlock", "usable_deadline"]

log = logging.getLogger("qldbstream.pipeline")


def late_policy(handler: Handler, default: LatePolicy) -> LatePolicy:
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
    """A handler's flush failed for good: what it was given is not done, the shard halts there."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_handler(
    pipeline: Pipeline,
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
    held = pipeline.held.pop((shard_id, name), [])
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
    planner = pipeline.planners[name]
    try:
        claimant = pipeline.claimant or f"shard|{shard_id or ''}"
        owners = [(e.copy(), claimant) for e in wanted] if planner.claims else None
        plan = planner.plan(
            [e.record for e in wanted],  # type: ignore[misc]
            allow_hold=pipeline.allow_hold,
            owners=owners,
            locker=claimant if planner.claims else "",
        )
    except Exception as exc:  # the de-duplication store cannot be read: stop here, retry later
        log.error("de-duplication store failed for %s: %r", name, exc)
        for e in wanted:
            e.hstate[name] = "pending"
        if held:
            pipeline.held[(shard_id, name)] = held
        result.halted, result.halt_reason = True, f"de-duplication store failed: {exc!r}"
        first = next((e for e in wanted if e in entries), None)
        return entries.index(first) if first is not None else 0
    for i, reason in plan.skipped.items():
        wanted[i].hstate[name] = "skip"
        if reason == "duplicate":
            result.duplicates += 1
            pipeline.metrics.incr("dedupe_hits", handler=name)
        else:
            result.late += 1
            pipeline.metrics.incr("late_revisions", handler=name, action="dropped")
    for i in plan.busy:
        wanted[i].hstate[name] = "busy"  # another process delivers it: it stays in the gate's store
    waiting = [wanted[i] for i in plan.waiting]  # behind another shard's delivery of its document
    for e in waiting:
        e.hstate[name] = "pending"
    for i in plan.held:
        wanted[i].hstate[name] = "held"  # finished for now: its shard's checkpoint waits (a cap)
    if plan.held:
        pipeline.held[(shard_id, name)] = [wanted[i] for i in plan.held]
        result.held += len(plan.held)
    order = [wanted[i] for i in plan.deliver]
    late = frozenset(j for j, i in enumerate(plan.deliver) if i in plan.late)
    if late:
        pipeline.metrics.incr("late_revisions", len(late), handler=name, action="delivered")
    for e in order:
        e.hstate[name] = "pending"
    ctx = HandlerContext(
        handler=name,
        shard_id=shard_id,
        deadline=deadline,
        metrics=pipeline.metrics,
        logger=logging.getLogger(f"qldbstream.handler.{name}"),
        window_state=window_state,
        late_indexes=late,
        delivery=pipeline.guarantee,
        clock=pipeline.clock,
    )
    halted_at = deliver(pipeline, handler, order, ctx, result)
    done = [e for e in order if e.hstate[name] == "done"]
    if done:
        try:
            flush(pipeline, handler, ctx, deadline)
            # documents let go before the done marks: a crash in between means a redelivery
            # (claimed again by the same shard), never a document left locked behind done work
            unlock(planner, plan.locks, order, name)
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
        unlock(planner, plan.locks, order, name)
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


def unlock(planner: Planner, locks: dict[str, str], order: list[Entry], name: str) -> None:
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


def deliver(
    pipeline: Pipeline, handler: Handler, order: list[Entry], ctx: HandlerContext, result: BatchResult
) -> int | None:
    """Deliver ``order`` with retries; returns the index in ``order`` where it halted."""
    name = handler.name
    breaker = pipeline.breakers[name]
    policy = pipeline.settings.retry
    pos, attempt, single = 0, 1, False
    first_failure: float | None = None
    retryable = getattr(handler, "retryable_errors", ())
    poison = getattr(handler, "poison_errors", ())
    while pos < len(order):
        if out_of_time(pipeline, ctx.deadline):
            result.halted, result.halt_reason = True, "the invocation deadline is near"
            return pos
        if not breaker.allow():
            result.halted = True
            result.halt_reason = f"circuit breaker for {name} is open (retry in {breaker.retry_after():.0f}s)"
            pipeline.metrics.incr("breaker_rejections", handler=name)
            return pos if pipeline.settings.stop_on_first_failure else None
        chunk = order[pos : pos + 1] if single else order[pos:]
        records = [e.record for e in chunk]
        started = pipeline.clock()
        try:
            handler.handle_batch(records, _with_attempt(ctx, attempt, pos))  # type: ignore[arg-type]
        except BatchItemError as exc:
            failing, cause = pos + exc.index, exc.cause
        except Exception as exc:
            # Progress unknown. A transient error is about the sink: retry the same chunk.
            # Anything else may be one bad record: isolate it by going one record at a time.
            transient = (
                classify(exc, retryable=retryable, poison=poison, transient=pipeline.transient)
                is Disposition.RETRY_THEN_HALT
            )
            if not single and len(chunk) > 1 and not transient:
                single = True
                continue
            failing, cause = pos, exc
        else:
            pipeline.metrics.observe("handler_latency", pipeline.clock() - started, handler=name)
            breaker.record_success()
            for e in chunk:
                e.hstate[name] = "done"
            pos += len(chunk)
            attempt, first_failure = 1, None
            continue
        for e in order[pos:failing]:
            e.hstate[name] = "done"
        pos = failing
        first_failure = first_failure or pipeline.wall_clock()
        disposition = classify(cause, retryable=retryable, poison=poison, transient=pipeline.transient)
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
            delay = policy.next_delay(
                attempt, pipeline.clock(), usable_deadline(pipeline.settings, ctx.deadline)
            )
            if delay is not None and breaker.state.value != "open":
                result.retries += 1
                pipeline.metrics.incr("retries", handler=name)
                pipeline.sleep(delay)
                attempt += 1
                continue
            if disposition is Disposition.RETRY_THEN_HALT:
                disposition = Disposition.HALT
            else:
                disposition = Disposition.DEAD_LETTER
        if disposition is Disposition.HALT:
            result.halt_reason = f"{name} failed on a record and will retry later: {cause!r}"
            if pipeline.settings.stop_on_first_failure:
                result.halted = True
                return pos
            pos += 1  # continue mode: leave it unfinished (the checkpoint stays), go on
            attempt, first_failure = 1, None
            continue
        # dead-letter this record for this handler, then go on
        assert entry.user is not None and entry.record is not None
        kr = entry.user.parent
        try:  # first let go of its claim: a replay of the dead letter must be able to claim it
            pipeline.planners[name].unclaim([entry.record], [entry.copy()])
        except Exception as exc:
            log.error("de-duplication store failed for %s: %r", name, exc)
            result.halted, result.halt_reason = True, f"de-duplication store failed: {exc!r}"
            return pos
        if not write_dead_letter(
            pipeline,
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


def flush(pipeline: Pipeline, handler: Handler, ctx: HandlerContext, deadline: float | None) -> None:
    def on_failure(exc: Exception, attempt: int, delay: float | None) -> None:
        log.warning("flush of %s failed (attempt %d): %r", handler.name, attempt, exc)

    retry(
        lambda: handler.flush(ctx),
        pipeline.settings.retry,
        retryable=lambda exc: True,
        sleep=pipeline.sleep,
        clock=pipeline.clock,
        deadline=usable_deadline(pipeline.settings, deadline),
        on_failure=on_failure,
        give_up=lambda exc, attempts: _Halt(f"flush of {handler.name} failed: {exc!r}"),
    )


def usable_deadline(settings: PipelineSettings, deadline: float | None) -> float | None:
    """The deadline for retries: ``deadline_margin`` seconds before the invocation's."""
    return None if deadline is None else deadline - settings.deadline_margin


def out_of_time(pipeline: Pipeline, deadline: float | None) -> bool:
    """Whether the invocation's deadline (less ``deadline_margin``) has come: stop delivering."""
    return deadline is not None and pipeline.clock() >= deadline - pipeline.settings.deadline_margin
