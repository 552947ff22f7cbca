"""Exactly once by revision identity: which revisions the export already holds, kept next to it.

The pipeline delivers a revision only once its block verified. A record that arrives before its
block summary is *parked* and delivered later - possibly in another shard's batch - and the
standalone worker delivers in journal order, merged over every shard. So a shard's records do not
reach the export in position order, and a replay from a shard's checkpoint does not re-deliver
everything after it: with an in-memory gate store a checkpoint stays before the oldest record its
shard parked while later records are delivered, flushed and marked done, and after a crash those
are skipped (done marks) or delivered again (no done marks), depending on the de-duplication
store. Nothing keyed by a shard position can tell what a replay brings; what the export holds is
therefore keyed by the revision itself, ``(documentId, version)``, and a written file is never
rewritten.

Bookkeeping, per *batch shard* (``ctx.shard_id``: the shard whose batch flushed, not necessarily
the shard a row was read from), under ``_export/shards/``:

* ``<shard>/<stem>.json`` - one **flush record** per flush: its files and the revisions they hold,
  ``pending`` (written before the files: the intent) then ``committed`` (rewritten after the last
  file: the flush happened);
* ``<shard>.json`` - the shard's **manifest**: every revision of its compacted flush records. The
  shard's flush records are folded into it (written first, then the records deleted) when the
  process first flushes the shard, and again whenever there are 32 or more holding a quarter as
  many revisions as it does (so each revision is rewritten a bounded number of times).

A flush (:meth:`ExportIndex.begin`, the files, :meth:`ExportIndex.commit`) writes only revisions no
committed record or manifest holds. A *pending* record is the trace of a flush that did not
finish: its revisions were not marked done, nor checkpointed past, so they are delivered again and
written by a later flush; once every revision it lists is held by a committed flush, its files and
then the record are deleted (:meth:`ExportIndex.collect`). Any process may do that: the revisions
are elsewhere, nothing is lost even if the flush was still running. Each step can be repeated
after a crash at any point.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qldbstream_handlers.export.storage import Storage

__all__ = ["ROOT", "ExportIndex", "Flush", "Key", "ShardManifest", "flush_path", "manifest_path"]

#: A revision's identity: (documentId, version).
Key = tuple[str, int]

ROOT = "_export/shards/"
#: fold a shard's flush records into its manifest once there are this many ...
COMPACT_RECORDS = 32
#: ... and they hold at least 1/COMPACT_RATIO of the manifest's revisions (amortized: each
#: revision is rewritten a bounded number of times)
COMPACT_RATIO = 4


def manifest_path(shard: str) -> str:
    return f"{ROOT}{shard}.json"


def flush_path(shard: str, stem: str) -> str:
    return f"{ROOT}{shard}/{stem}.json"


def _pack(keys: Iterable[Key]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for doc, version in sorted(keys):
        out.setdefault(doc, []).append(version)
    return out


def _unpack(raw: Mapping[str, Iterable[Any]]) -> set[Key]:
    return {(doc, int(v)) for doc, versions in raw.items() for v in versions}


@dataclass
class Flush:
    """One flush: the files it writes (``data:<path>`` or ``errors:<path>``) and their revisions."""

    shard: str
    stem: str
    files: list[str]
    keys: frozenset[Key]
    committed: bool = False
    #: read from a version-1 manifest: not yet written as a record of its own
    legacy: bool = field(default=False, compare=False)

    @property
    def path(self) -> str:
        return flush_path(self.shard, self.stem)

    def encode(self) -> bytes:
        doc = {
            "version": 2,
            "shard": self.shard,
            "stem": self.stem,
            "state": "committed" if self.committed else "pending",
            "files": self.files,
            "revisions": _pack(self.keys),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, shard: str, stem: str, blob: bytes) -> Flush:
        raw = json.loads(blob)
        keys = frozenset(_unpack(raw["revisions"]))
        return cls(shard, stem, list(raw["files"]), keys, raw["state"] == "committed")


class ShardManifest:
    """One batch shard's bookkeeping as this process knows it."""

    def __init__(self, shard: str) -> None:
        self.shard = shard
        #: every revision held by a committed flush of this shard (compacted or not)
        self.exported: set[Key] = set()
        #: flush records not folded into the manifest yet, by stem (pending or committed)
        self.flushes: dict[str, Flush] = {}
        #: the stored manifest is missing or in the version-1 format: (re)write it when compacting
        self.outdated = True

    def add(self, flush: Flush) -> None:
        self.flushes[flush.stem] = flush
        if flush.committed:
            self.exported |= flush.keys

    def read(self, blob: bytes, stores: Mapping[str, Storage]) -> None:
        """Merge a stored manifest (version 2, or the version-1 list of recent flushes)."""
        raw = json.loads(blob)
        if raw.get("version") != 1:
            self.exported |= _unpack(raw["revisions"])
            self.outdated = False
            return
        # Version 1 wrote a flush's entry before its files: complete when every file is there;
        # otherwise it is a flush that did not finish (pending). Its keys are "documentId#version".
        for entry in raw["flushes"]:
            keys = frozenset((k.rpartition("#")[0], int(k.rpartition("#")[2])) for k in entry["keys"])
            files = list(entry["files"])
            first = entry["first"]
            stem = f"v1-{first[0]}-{int(first[1]):05d}"
            if all(_exists(stores, ref) for ref in files):
                self.exported |= keys
            elif stem not in self.flushes:
                self.flushes[stem] = Flush(self.shard, stem, files, keys, legacy=True)

    def committed_records(self) -> list[Flush]:
        return [f for f in self.flushes.values() if f.committed]

    def encode(self) -> bytes:
        doc = {"version": 2, "shard": self.shard, "revisions": _pack(self.exported)}
        return json.dumps(doc, separators=(",", ":")).encode()


def _exists(stores: Mapping[str, Storage], ref: str) -> bool:
    kind, _, path = ref.partition(":")
    return path in stores[kind].list(path)


class ExportIndex:
    """Every revision the destination holds (all shards' manifests and committed flush records),
    the pending flushes, and the flush protocol. ``stores``: ``data`` and ``errors``."""

    def __init__(self, storage: Storage, stores: Mapping[str, Storage]) -> None:
        self.storage = storage
        self.stores = stores
        self.shards: dict[str, ShardManifest] = {}
        #: shards whose bookkeeping this process folded and refreshed (its own, while it has them)
        self._claimed: set[str] = set()

    @classmethod
    def load(cls, storage: Storage, stores: Mapping[str, Storage]) -> ExportIndex:
        index = cls(storage, stores)
        paths = storage.list(ROOT)
        # The flush records before the manifests: a compaction writes the manifest before it
        # deletes the records, so a record gone by now is in the manifest read after it.
        for path in paths:
            shard, _, name = path[len(ROOT) :].partition("/")
            if name and "/" not in name and name.endswith(".json"):
                blob = storage.get(path)
                if blob is not None:
                    index.manifest(shard).add(Flush.decode(shard, name.removesuffix(".json"), blob))
        for path in paths:
            name = path[len(ROOT) :]
            if "/" not in name and name.endswith(".json"):
                blob = storage.get(path)
                if blob is not None:
                    index.manifest(name.removesuffix(".json")).read(blob, stores)
        return index

    def manifest(self, shard: str) -> ShardManifest:
        manifest = self.shards.get(shard)
        if manifest is None:
            manifest = self.shards[shard] = ShardManifest(shard)
        return manifest

    def exported(self, key: Key) -> bool:
        """Whether a committed flush (of any shard) holds revision ``key``."""
        return any(key in m.exported for m in self.shards.values())

    # --- the flush protocol -------------------------------------------------------------------
    def claim(self, shard: str) -> None:
        """Before this process's first flush of ``shard`` (again after ``release``): read what
        other processes wrote for it and fold its committed flush records into its manifest."""
        if shard not in self._claimed:
            self.compact(shard)
            self._claimed.add(shard)

    def release(self, shard: str) -> None:
        """Another process may flush ``shard`` now: read its bookkeeping again before the next flush."""
        self._claimed.discard(shard)

    def begin(self, flush: Flush) -> None:
        """The intent: the record, pending, before any file."""
        flush.committed = False
        self.storage.put(flush.path, flush.encode())
        self.manifest(flush.shard).add(flush)

    def commit(self, flush: Flush) -> None:
        """Every file is written: the record, committed. Its revisions are exported from now on."""
        flush.committed = True
        self.storage.put(flush.path, flush.encode())
        self.manifest(flush.shard).add(flush)

    def collect(self) -> int:
        """Delete the files and records of pending flushes whose every revision a committed flush
        holds; return how many revisions they listed."""
        removed = 0
        for manifest in self.shards.values():
            for flush in [f for f in manifest.flushes.values() if not f.committed]:
                if not all(self.exported(k) for k in flush.keys):
                    continue
                blob = None if flush.legacy else self.storage.get(flush.path)
                stored = None if blob is None else Flush.decode(flush.shard, flush.stem, blob)
                if stored is not None and stored.committed:  # it finished meanwhile (another process)
                    manifest.add(stored)
                    continue
                for ref in flush.files:
                    kind, _, path = ref.partition(":")
                    self.stores[kind].delete(path)
                self.storage.delete(flush.path)
                del manifest.flushes[flush.stem]
                removed += len(flush.keys)
        return removed

    def due(self, shard: str) -> bool:
        """Whether the shard's committed flush records should be folded into its manifest now."""
        manifest = self.manifest(shard)
        records = manifest.committed_records()
        held = sum(len(f.keys) for f in records)
        return len(records) >= COMPACT_RECORDS and held * COMPACT_RATIO >= len(manifest.exported) - held

    def compact(self, shard: str) -> None:
        """Refresh the shard's bookkeeping from the destination and fold its committed flush
        records into its manifest: the manifest first (the union), then the records go."""
        manifest = self.manifest(shard)
        listed: set[str] = set()
        for path in self.storage.list(f"{ROOT}{shard}/"):
            name = path[len(ROOT) + len(shard) + 1 :]
            if "/" in name or not name.endswith(".json"):
                continue
            stem = name.removesuffix(".json")
            listed.add(stem)
            known = manifest.flushes.get(stem)
            if known is not None and known.committed:
                continue
            blob = self.storage.get(path)
            if blob is not None:
                manifest.add(Flush.decode(shard, stem, blob))
        for stem, flush in list(manifest.flushes.items()):
            if stem not in listed and not flush.legacy:
                del manifest.flushes[stem]  # collected or compacted elsewhere: in the manifest, if anywhere
        blob = self.storage.get(manifest_path(shard))
        if blob is not None:
            manifest.read(blob, self.stores)
        for flush in manifest.flushes.values():
            if flush.legacy:  # a version-1 flush that did not finish: it needs a record to be collected
                self.storage.put(flush.path, flush.encode())
                flush.legacy = False
        records = manifest.committed_records()
        if records or manifest.outdated:
            self.storage.put(manifest_path(shard), manifest.encode())
            manifest.outdated = False
        for flush in records:
            self.storage.delete(flush.path)
            del manifest.flushes[flush.stem]
