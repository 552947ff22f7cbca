"""Resumable export without duplicate rows: each shard's manifest of its recent flushes.

A flush writes the rows a shard delivered since the previous flush, one file per partition, all
named after the position ``F`` of the flush's first record. Before any file is written, the
shard's manifest (``_export/shards/<shard>.json``) records the flush: its first and last position,
its files and the revision keys (``documentId#version``) it holds. The runtime moves its checkpoint
only after ``flush`` returned, so after a crash the shard is read again from a position at or
before ``F`` - and the next flush starts with *truncation*:

* every recorded flush that reaches ``F`` or beyond loses its rows at positions ``>= F`` (a file is
  rewritten with the rows before ``F``, or deleted when none remain; a file the new flush will
  overwrite whole is left to it); those rows are about to be written again;
* the manifest is saved with the new flush (intent), then the new files are written (each one
  atomically). A crash between two of these steps leaves files that the next replay truncates
  again - the steps are idempotent.

The manifest also answers "was this revision exported already?" for the stream's own duplicates
(QLDB and Kinesis deliver at least once): a revision whose key a *kept* earlier flush holds at a
position before ``F`` is skipped. Only the last ``track`` flushes are remembered (default 8); the
runtimes checkpoint after every batch, so a replay never reaches further back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qldbstream_handlers.export.layout import Format, positions_kept, restore_row
from qldbstream_handlers.export.schema import Position
from qldbstream_handlers.export.storage import Storage

__all__ = ["Flush", "ShardManifest", "manifest_path"]


def manifest_path(shard: str) -> str:
    return f"_export/shards/{shard}.json"


def _pos(raw: list[Any]) -> Position:
    return (int(raw[0]), int(raw[1]))


def _raw(p: Position) -> list[Any]:
    return [str(p[0]), p[1]]


@dataclass
class Flush:
    first: Position
    last: Position
    #: ``data:<path>`` (in the data destination) or ``errors:<path>`` (in the error destination)
    files: list[str]
    keys: dict[str, Position] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "first": _raw(self.first),
            "last": _raw(self.last),
            "files": self.files,
            "keys": {k: _raw(p) for k, p in sorted(self.keys.items())},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Flush:
        keys = {k: _pos(p) for k, p in raw["keys"].items()}
        return cls(_pos(raw["first"]), _pos(raw["last"]), list(raw["files"]), keys)


class ShardManifest:
    def __init__(self, shard: str, flushes: list[Flush] | None = None, track: int = 8) -> None:
        self.shard = shard
        self.flushes = flushes or []
        self.track = track
        self._index: dict[str, Position] | None = None

    @classmethod
    def load(cls, storage: Storage, shard: str, track: int = 8) -> ShardManifest:
        blob = storage.get(manifest_path(shard))
        if blob is None:
            return cls(shard, track=track)
        raw = json.loads(blob)
        return cls(shard, [Flush.from_json(f) for f in raw["flushes"]], track)

    def save(self, storage: Storage) -> None:
        doc = {"version": 1, "shard": self.shard, "flushes": [f.as_json() for f in self.flushes]}
        storage.put(manifest_path(self.shard), json.dumps(doc, indent=1).encode())

    def position_of(self, key: str) -> Position | None:
        """Where a kept flush holds revision ``key`` (``None``: not in the recent flushes)."""
        if self._index is None:
            self._index = {k: p for f in self.flushes for k, p in f.keys.items()}
        return self._index.get(key)

    def truncate(
        self, first: Position, stores: Mapping[str, Storage], fmt: Format, rewritten: set[str]
    ) -> int:
        """Remove every recorded row at ``first`` or later; return how many rows were removed."""
        removed = 0
        for flush in list(self.flushes):
            if flush.last < first:
                continue
            kept: list[str] = []
            for ref in flush.files:
                kind, _, path = ref.partition(":")
                if ref in rewritten and flush.first >= first:
                    continue  # the new flush overwrites this file whole
                store = stores[kind]
                blob = store.get(path)
                if blob is None:
                    continue
                removed += self._cut(store, path, blob, kind, first, fmt, kept, ref)
            flush.files = kept
            flush.keys = {k: p for k, p in flush.keys.items() if p < first}
            if flush.keys:
                flush.last = max(flush.keys.values())
            else:
                self.flushes.remove(flush)
        self._index = None
        return removed

    @staticmethod
    def _cut(
        store: Storage,
        path: str,
        blob: bytes,
        kind: str,
        first: Position,
        fmt: Format,
        kept: list[str],
        ref: str,
    ) -> int:
        if kind == "data":
            rows = fmt.decode(blob)
            keep = positions_kept(rows, first)
            if keep:
                store.put(path, fmt.encode([restore_row(r, fmt) for r in keep]))
        else:
            rows = [json.loads(line) for line in blob.decode().splitlines() if line]
            keep = [r for r in rows if (int(r["sequenceNumber"]), int(r["subSequenceNumber"])) < first]
            if keep:
                store.put(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep).encode())
        if keep:
            kept.append(ref)
        else:
            store.delete(path)
        return len(rows) - len(keep)

    def add(self, flush: Flush) -> None:
        self.flushes.append(flush)
        del self.flushes[: max(0, len(self.flushes) - self.track)]
        self._index = None
