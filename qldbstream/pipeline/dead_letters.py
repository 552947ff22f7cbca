"""Dead-lettering for the pipeline: poison records set aside, handler failures written, envelopes sealed.

Every dead letter of a :class:`~qldbstream.pipeline.batch.Pipeline` goes through
:func:`write_dead_letter`: one envelope (:func:`~qldbstream.pipeline.dlq.envelope_for`), sealed when
the pipeline masks (:func:`seal`: the raw bytes encrypted, a masked copy for humans), written
to the pipeline's DLQ. A write that fails returns False: the record then stays unfinished and
the checkpoint holds before it. :func:`set_aside` dead-letters a poison record (undeaggregatable,
undecodable, failing verification) once, even when its batch is delivered again.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.entries import Entry
from qldbstream.core.masking_dlq import seal_envelope
from qldbstream.core.records import KinesisRecord, UserRecord
from qldbstream.core.verify import Failure
from qldbstream.pipeline.dlq import DeadLetter, envelope_for
from qldbstream.pipeline.result import BatchResult

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["seal", "set_aside", "write_dead_letter"]

log = logging.getLogger("qldbstream.pipeline")

#: poison records a pipeline remembers having dead-lettered (not written again on redelivery)
_RECENTLY_DEAD_MAX = 10_000


def set_aside(
    pipeline: Pipeline, records: Sequence[KinesisRecord], entry: Entry, result: BatchResult
) -> bool:
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
    if key in pipeline.recently_dead and kr.sequence_number:
        pipeline.recently_dead.move_to_end(key)
        entry.dead = True
        return True
    if not write_dead_letter(pipeline, result, stage, error, kr, entry.user, record, failures):
        return False
    entry.dead = True
    if kr.sequence_number:
        pipeline.recently_dead[key] = None
        if len(pipeline.recently_dead) > _RECENTLY_DEAD_MAX:
            pipeline.recently_dead.popitem(last=False)
    return True


def write_dead_letter(
    pipeline: Pipeline,
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
        now=pipeline.wall_clock(),
    )
    try:  # sealing (KMS) inside: a key that cannot be reached holds the checkpoint too
        if pipeline.masker is not None and pipeline.sealer is not None:
            letter = seal(pipeline, letter, record)
        pipeline.dlq.put(letter)
    except Exception as dlq_error:  # any failure to store it: the checkpoint must hold
        log.error("DLQ write failed for %s: %r", letter.position.describe(), dlq_error)
        pipeline.metrics.incr("dlq_write_failures")
        return False
    result.dead_lettered += 1
    pipeline.metrics.incr("dlq_writes", stage=stage, handler=handler or "")
    return True


def seal(pipeline: Pipeline, letter: DeadLetter, record: JournalRecord | None) -> DeadLetter:
    """The envelope with its raw bytes encrypted, a masked copy of the document, scrubbed messages."""
    assert pipeline.masker is not None and pipeline.sealer is not None
    data = None
    if isinstance(record, RevisionDetails) and not record.is_deleted and not record.is_redacted:
        data = record.original_ion()["payload"]["revision"]["data"]
    sealed = seal_envelope(json.loads(letter.to_json()), pipeline.masker, pipeline.sealer, data)
    return DeadLetter.from_json(json.dumps(sealed))
