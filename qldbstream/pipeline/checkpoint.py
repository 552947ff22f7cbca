"""Where a long-running worker records how far it got in each shard.

The standalone worker writes a checkpoint after every batch (the pipeline says where: never
past a record that is neither done nor dead-lettered). Stores must never move a checkpoint
backwards and must remember shards read to their end, so that after a restart a child shard is
only read once its parents are finished.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

__all__ = ["Checkpoint", "CheckpointStore", "InMemoryCheckpointStore", "sequence_key"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    shard_id: str
    #: the last finished record (``None``: nothing finished yet)
    sequence_number: str | None
    sub_sequence_number: int = 0
    #: the shard is closed and every record of it is finished
    shard_ended: bool = False


def sequence_key(sequence_number: str | None, sub_sequence_number: int = 0) -> tuple[int, int]:
    """Order of checkpoints: sequence numbers compare as integers, never as strings."""
    return (-1 if sequence_number is None else int(sequence_number), sub_sequence_number)


class CheckpointStore(Protocol):
    """Where checkpoints are kept, per stream and shard: never moved backwards, shard ends sticky."""

    def get(self, stream: str, shard_id: str) -> Checkpoint | None: ...

    def all(self, stream: str) -> dict[str, Checkpoint]: ...

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` unless the stored one is further along (conditional write)."""
        ...


class InMemoryCheckpointStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], Checkpoint] = {}

    def get(self, stream: str, shard_id: str) -> Checkpoint | None:
        return self._data.get((stream, shard_id))

    def all(self, stream: str) -> dict[str, Checkpoint]:
        return {shard: cp for (s, shard), cp in self._data.items() if s == stream}

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        current = self._data.get((stream, checkpoint.shard_id))
        if current is not None:
            behind = sequence_key(current.sequence_number, current.sub_sequence_number) > sequence_key(
                checkpoint.sequence_number, checkpoint.sub_sequence_number
            )
            if behind:  # never backwards; a shard end behind the stored position only marks the end
                if checkpoint.shard_ended and not current.shard_ended:
                    self._data[(stream, checkpoint.shard_id)] = replace(current, shard_ended=True)
                return
            if current.shard_ended and not checkpoint.shard_ended:
                return  # shard end is sticky: a late save (a zombie worker) changes nothing
        self._data[(stream, checkpoint.shard_id)] = checkpoint
