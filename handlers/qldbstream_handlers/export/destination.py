"""The export keeps its own bookkeeping next to its output, so one command resumes it anywhere.

* :class:`DestinationCheckpointStore` - the worker's checkpoints as ``_export/checkpoints/<key>/
  <shard>.json`` in the destination: running the same ``qldbstream export`` again resumes where
  the last run stopped (or crashed), with nothing else to set up.
* :class:`ErrorPrefixDeadLetterQueue` - what the pipeline dead-letters (records that fail
  verification or cannot be decoded) goes under the error prefix, as the DLQ envelope (reason,
  position, the raw record in base64), named by its position: writing one twice replaces it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from qldbstream.api.ports import Checkpoint, DeadLetter, sequence_key
from qldbstream_handlers.export.storage import Storage

__all__ = ["DestinationCheckpointStore", "ErrorPrefixDeadLetterQueue"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


class DestinationCheckpointStore:
    """A :class:`~qldbstream.pipeline.checkpoint.CheckpointStore` in the export's destination."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _path(self, stream: str, shard_id: str) -> str:
        return f"_export/checkpoints/{_safe(stream)}/{_safe(shard_id)}.json"

    @staticmethod
    def _decode(blob: bytes) -> Checkpoint:
        raw = json.loads(blob)
        return Checkpoint(
            raw["shard_id"], raw["sequence_number"], raw["sub_sequence_number"], raw["shard_ended"]
        )

    def get(self, stream: str, shard_id: str) -> Checkpoint | None:
        blob = self.storage.get(self._path(stream, shard_id))
        return None if blob is None else self._decode(blob)

    def all(self, stream: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        for path in self.storage.list(f"_export/checkpoints/{_safe(stream)}/"):
            blob = self.storage.get(path)
            if blob is not None:
                cp = self._decode(blob)
                out[cp.shard_id] = cp
        return out

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        current = self.get(stream, checkpoint.shard_id)
        if current is not None and not checkpoint.shard_ended:
            behind = sequence_key(checkpoint.sequence_number, checkpoint.sub_sequence_number) < sequence_key(
                current.sequence_number, current.sub_sequence_number
            )
            if current.shard_ended or behind:
                return  # never backwards
        doc = {
            "shard_id": checkpoint.shard_id,
            "sequence_number": checkpoint.sequence_number,
            "sub_sequence_number": checkpoint.sub_sequence_number,
            "shard_ended": checkpoint.shard_ended,
        }
        self.storage.put(self._path(stream, checkpoint.shard_id), json.dumps(doc).encode())


class ErrorPrefixDeadLetterQueue:
    """A :class:`~qldbstream.pipeline.dlq.DeadLetterQueue` writing envelopes under ``dead-letters/``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def put(self, letter: DeadLetter) -> None:
        name = "-".join(
            _safe(str(part))
            for part in (letter.sequence_number or letter.id, letter.sub_sequence_number or 0, letter.stage)
        )
        self.storage.put(
            f"dead-letters/{_safe(letter.shard_id or 'unknown')}/{name}.json", letter.to_json().encode()
        )

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        for path in self.storage.list("dead-letters/")[:limit]:
            blob = self.storage.get(path)
            if blob is not None:
                yield path, DeadLetter.from_json(blob.decode())

    def delete(self, handle: str) -> None:
        self.storage.delete(handle)

    def __len__(self) -> int:
        return len(self.storage.list("dead-letters/"))
