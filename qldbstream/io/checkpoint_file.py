"""The checkpoint store in a local JSON file, for one process (``qldbstream run --checkpoint-file``).

:class:`FileCheckpointStore` keeps the same rules as every
:class:`~qldbstream.pipeline.checkpoint.CheckpointStore`: a checkpoint never moves backwards and
``shard_ended`` is sticky. Every save rewrites the whole file through a temporary file and an atomic
rename, so an interrupted process leaves the previous checkpoints or the new ones, never half a file.
It is meant for bounded replays of archives on one machine; workers that share checkpoints use the
DynamoDB store (:mod:`qldbstream.io.checkpoint_dynamodb`).

What happens next on errors: a file that is not this store's JSON raises
:class:`~qldbstream.core.errors.InputError` naming it (move it away or give another path); a file that
cannot be written raises ``OSError`` (the run stops; the checkpoint before it stays on disk).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from qldbstream.core.errors import InputError
from qldbstream.pipeline.checkpoint import Checkpoint, InMemoryCheckpointStore

__all__ = ["FileCheckpointStore"]

#: the file's ``format`` field: a file of another shape is refused, never overwritten
FORMAT = "qldbstream-checkpoints/1"


class FileCheckpointStore:
    """Checkpoints per key (a stream, an archive's location) and shard, in the JSON file ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._memory = InMemoryCheckpointStore()
        self._keys: set[str] = set()
        for key, shards in self._load().items():
            self._keys.add(key)
            for cp in shards.values():
                self._memory.save(key, cp)

    def _load(self) -> dict[str, dict[str, Checkpoint]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT!r}")
            return {
                key: {shard: _checkpoint(shard, item) for shard, item in shards.items()}
                for key, shards in doc["checkpoints"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"{self.path}: not a qldbstream checkpoint file ({exc}); give another --checkpoint-file "
                "or move this one away"
            ) from None

    def get(self, stream: str, shard_id: str) -> Checkpoint | None:
        return self._memory.get(stream, shard_id)

    def all(self, stream: str) -> dict[str, Checkpoint]:
        return self._memory.all(stream)

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` unless the stored one is further along; the file is rewritten atomically."""
        before = self._memory.get(stream, checkpoint.shard_id)
        self._memory.save(stream, checkpoint)
        self._keys.add(stream)
        if self._memory.get(stream, checkpoint.shard_id) != before:
            self._write()

    def _write(self) -> None:
        doc: dict[str, Any] = {"format": FORMAT, "checkpoints": {}}
        for key in sorted(self._keys):
            doc["checkpoints"][key] = {
                shard: {
                    "sequenceNumber": cp.sequence_number,
                    "subSequenceNumber": cp.sub_sequence_number,
                    "shardEnded": cp.shard_ended,
                }
                for shard, cp in sorted(self._memory.all(key).items())
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _checkpoint(shard: str, item: Any) -> Checkpoint:
    seq = item["sequenceNumber"]
    if seq is not None and not (isinstance(seq, str) and seq.isdigit()):
        raise ValueError(f"shard {shard}: sequenceNumber {seq!r} is not a decimal number")
    return Checkpoint(shard, seq, int(item.get("subSequenceNumber", 0)), bool(item.get("shardEnded", False)))
