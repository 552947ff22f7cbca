"""Stage 1 of the pipeline: deaggregate, decode and verify one batch; poison records to the DLQ.

:func:`decode_batch` turns a shard's Kinesis records into :class:`~qldbstream.core.entries.Entry`
objects, one per user record (or one per Kinesis record that cannot be deaggregated). Each user
record is decoded and verified on its original bytes, then masked when the pipeline masks. What
happens on a failed check is the pipeline's ``verification_action``: dead-letter the record, halt
the shard there, or deliver anyway (observe-only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import BlockSummary, ControlRecord, decode
from qldbstream.core.entries import Entry
from qldbstream.core.errors import DeaggregationError, PoisonRecordError
from qldbstream.core.gate import OWN_BLOCK_CHECKS
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.dead_letters import set_aside
from qldbstream.pipeline.result import BatchResult
from qldbstream.pipeline.settings import VerificationAction

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["decode_and_verify", "decode_batch"]

log = logging.getLogger("qldbstream.pipeline")


def decode_batch(
    pipeline: Pipeline, records: Sequence[KinesisRecord], result: BatchResult, stop_at_completed: bool = False
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
            result.verification_failures.extend(pipeline.verifier.aggregate(kr.position, exc))
            pipeline.metrics.incr("verification_failures", check="V1")
            entry = Entry(k, None, None)
            entry.poison = ("deaggregate", exc, None, None)
            entries.append(entry)
            if not set_aside(pipeline, records, entry, result):
                result.halt_reason = "the DLQ write failed"
                if pipeline.settings.stop_on_first_failure:
                    halt_at = len(entries) - 1
            continue
        if kr.data[:4] == KPL_MAGIC:
            pipeline.verifier.aggregate(kr.position, None)
        for user in users:
            result.user_records += 1
            entry = Entry(k, user, None)
            entries.append(entry)
            if not decode_and_verify(pipeline, entry, result) and halt_at is None:
                halt_at = len(entries) - 1
            record = entry.record
            if (
                stop_at_completed
                and isinstance(record, ControlRecord)
                and record.control_record_type == "COMPLETED"
            ):
                result.completed = kr
            elif entry.poison is not None and not set_aside(pipeline, records, entry, result):
                result.halt_reason = "the DLQ write failed"
                if pipeline.settings.stop_on_first_failure and halt_at is None:
                    halt_at = len(entries) - 1
    return entries, halt_at


def decode_and_verify(pipeline: Pipeline, entry: Entry, result: BatchResult) -> bool:
    """Decode and verify one user record; False when verification says to halt the shard."""
    user = entry.user
    assert user is not None
    try:
        record = decode(user)
        failures = pipeline.verifier.verify(record)
    except PoisonRecordError as exc:
        pipeline.metrics.incr("decode_errors", error=type(exc).__name__)
        entry.poison = ("decode", exc, None, None)
        return True
    pipeline.metrics.incr("records_verified", record_type=record.record_type.value)
    if failures:
        result.verification_failures.extend(failures)
        for f in failures:
            pipeline.metrics.incr("verification_failures", check=f.check)
            log.warning("verification failed: %s at %s: %s", f.check, f.position.describe(), f.message)
        action = pipeline.settings.verification_action
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
    if pipeline.masker is not None:
        record.mask_with(pipeline.masker)  # verified on the original bytes; handlers see masked data
    entry.record = record
    return True
