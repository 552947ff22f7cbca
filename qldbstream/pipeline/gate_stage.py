"""Stage 2 of the pipeline: the delivery gate - admit, park or reject; release what is decided.

:func:`admit` asks the pipeline's :class:`~qldbstream.core.admit.Admission` to judge every
record of the batch (a record is delivered only when every check that covers it passed, see
:mod:`qldbstream.core.gate`), adds the parked records of earlier batches that this one's blocks
release (and, now and then, the ones whose wait ran out), and dead-letters what is rejected.
After delivery, :func:`unpark_finished` takes the released records that are done out of the
gate's store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qldbstream.core.entries import Entry, UnverifiableRecordError
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.dead_letters import set_aside
from qldbstream.pipeline.result import BatchResult
from qldbstream.pipeline.settings import VerificationAction

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["admit", "unpark_finished"]

log = logging.getLogger("qldbstream.pipeline")


def admit(
    pipeline: Pipeline,
    shard_id: str | None,
    records: Sequence[KinesisRecord],
    entries: list[Entry],
    limit: int,
    result: BatchResult,
) -> tuple[list[Entry], int]:
    """Stage 2: judge every record; returns the entries (released ones included) and the limit."""
    admission = pipeline.admission
    try:
        before = len(entries)
        entries = admission.admit(entries, limit, shard_id)
        limit += len(entries) - before
        ordered = admission.ordered_releases(drain=pipeline.draining)
        if ordered:
            entries = ordered + entries
            limit += len(ordered)
        now = pipeline.clock()
        if now >= pipeline.next_sweep or pipeline.draining:
            pipeline.next_sweep = now + min(10.0, pipeline.settings.max_wait / 10)
            admission.let_go_of_old_holds(everything=pipeline.draining)
            expired = admission.expired(10_000 if pipeline.draining else 100, everything=pipeline.draining)
            if expired:
                pipeline.metrics.incr("parked_expired", len(expired))
                entries = expired + entries
                limit += len(expired)
    except Exception as exc:  # the gate's store cannot be read or written: stop here, retry later
        if isinstance(exc, PoisonRecordError):
            raise
        log.error("the delivery gate's store failed: %r", exc)
        result.halted, result.halt_reason = True, f"the delivery gate's store failed: {exc!r}"
        return entries, 0
    halt_action = pipeline.settings.verification_action is VerificationAction.HALT
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
                pipeline.metrics.incr("verification_failures", check=f.check)
                log.warning("not delivered: %s at %s: %s", f.check, f.position.describe(), f.message)
        if halt_action and stage == "verify":
            result.halted, result.halt_reason = (
                True,
                f"verification failed ({error}) and the action is halt",
            )
            return entries, i
        if not set_aside(pipeline, records, e, result):
            result.halt_reason = "the DLQ write failed"
            if pipeline.settings.stop_on_first_failure:
                result.halted = True
                return entries, i
    if result.parked:
        pipeline.metrics.incr("records_parked", result.parked)
    if not pipeline.gate_store.durable and admission.caps.count() > pipeline.settings.max_parked:
        first = next(
            (i for i, e in enumerate(entries[:limit]) if e.parked is not None and not e.foreign), None
        )
        if first is not None:
            for e in entries[first:limit]:
                if e.parked is not None:
                    pipeline.gate_store.unpark(e.parked.key, [e.parked.id])
                    e.parked = None
            result.halted = True
            result.halt_reason = (
                f"more than {pipeline.settings.max_parked} records wait for their block summaries in memory"
            )
            return entries, first
    return entries, limit


def unpark_finished(
    pipeline: Pipeline, entries: list[Entry], limit: int, result: BatchResult
) -> tuple[set[str | None], set[str]]:
    """Released records that are done (or dead-lettered) leave the store; returns the shards
    whose in-memory caps were lifted, and the ids of the records that left."""
    lifted: set[str | None] = set()
    released: set[str] = set()
    stop_mode = pipeline.settings.stop_on_first_failure
    by_key: dict[tuple[str, int], list[str]] = {}
    for i, e in enumerate(entries):
        parked = e.release
        if parked is None or (stop_mode and i >= limit) or not e.settled():
            continue
        by_key.setdefault(parked.key, []).append(parked.id)
        released.add(parked.id)
        if pipeline.admission.caps.remove(parked.shard_id, parked.id):
            lifted.add(parked.shard_id)
    for key, ids in by_key.items():
        try:
            pipeline.gate_store.unpark(key, ids)
        except Exception as exc:  # delivered and still parked: delivered again later (de-duplicated)
            log.warning("could not remove delivered records from the gate's store: %r", exc)
    return lifted, released
