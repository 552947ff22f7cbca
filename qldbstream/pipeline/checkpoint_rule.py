"""Stage 4 of the pipeline: the checkpoint rule - never advance past a record that is neither done
nor dead-lettered.

:func:`compute_checkpoint` sets a batch's ``checkpoint`` (the last user record of its finished prefix)
and ``first_unfinished`` (the first Kinesis record that is not finished: what Lambda reports as
the batch item failure). A record that waits inside the pipeline - parked in memory for its block,
held back by the reorder policy, or holding its block for a later one - puts a *cap* on its shard's
checkpoint (:attr:`~qldbstream.core.admit.Admission.caps`) until it is finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qldbstream.core.entries import Entry
from qldbstream.core.records import KinesisRecord, UserRecord
from qldbstream.pipeline.result import BatchResult

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["compute_checkpoint", "held_cap"]


def compute_checkpoint(
    pipeline: Pipeline,
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
    stop_mode = pipeline.settings.stop_on_first_failure
    caps = pipeline.admission.caps
    in_memory = not pipeline.gate_store.durable
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
                    caps.add(shard_id, held_cap(e.user), here, before)
                if in_memory and e.holds is not None and pipeline.admission.holding(e.holds):
                    cap = f"block|{e.user.sequence_number}|{e.user.sub_sequence_number}"
                    caps.add(shard_id, cap, here, before)
                    pipeline.admission.hold(e.holds, shard_id, cap)
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


def held_cap(user: UserRecord) -> str:
    """The cap a record held back by the reorder policy puts on its shard's checkpoint."""
    return f"held|{user.sequence_number}|{user.sub_sequence_number}"


def _position(user: UserRecord) -> tuple[int, int]:
    return (int(user.sequence_number or 0), user.sub_sequence_number)
