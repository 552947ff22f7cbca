"""What :meth:`Pipeline.process <qldbstream.pipeline.batch.Pipeline.process>` returns: one batch's outcome.

The runtimes read it to checkpoint (``checkpoint``, ``first_unfinished``, ``other_checkpoints``),
to decide what comes next (``halted``, ``halt_reason``, ``completed``) and to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qldbstream.core.records import KinesisRecord
from qldbstream.core.verify import Failure

__all__ = ["BatchResult"]


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
