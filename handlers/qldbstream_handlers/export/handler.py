"""The export handler: verified revisions in a ``txTime`` range → partitioned, compressed files.

Lifecycle (see :mod:`qldbstream.handler`):

* ``wants`` - revisions of the chosen tables with ``start <= txTime < end``. The bounds are on the
  revision's commit time, as QLDB's own ``InclusiveStartTime``/``ExclusiveEndTime`` are, and not
  on Kinesis arrival: arrival depends on QLDB's put latency and on *when the stream was read* (a
  bounded stream created today for last year arrives today), so arrival cannot say which year a
  revision belongs to.
* ``handle_batch`` - one row per revision into the shard's buffer (by position, so a retried
  chunk replaces its rows); data that cannot be rendered becomes an *error line* with its reason;
  a revision already exported by an earlier kept flush is skipped (see :mod:`.manifest`).
* ``flush`` - before the checkpoint: truncate what a replay re-delivers, save the manifest, write
  one file per partition and one error file, each atomically under a deterministic name.
* ``shard_released`` - drop the shard's unflushed rows (its next reader reads them again).
"""

from __future__ import annotations

import json
import logging
import time
from base64 import b64encode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qldbstream.decode import JournalRecord, RevisionDetails
from qldbstream.errors import ConfigurationError
from qldbstream.handler import Handler, HandlerContext, SetupContext
from qldbstream.metrics import Metrics, NullMetrics
from qldbstream_handlers.export.layout import file_name, partition_function
from qldbstream_handlers.export.manifest import Flush, ShardManifest
from qldbstream_handlers.export.options import ExportOptions
from qldbstream_handlers.export.schema import Position, RenderError, position_of, revision_row, tx_time_utc
from qldbstream_handlers.export.storage import Storage, open_storage

__all__ = ["ExportHandler", "ExportProgress"]

log = logging.getLogger("qldbstream.handler.export")


@dataclass
class ExportProgress:
    """What has been written (counted at each successful flush): for progress bars and reports."""

    rows: int = 0
    errors: int = 0
    duplicates: int = 0
    files: int = 0
    truncated: int = 0
    #: the newest ``txTime`` written, epoch seconds
    newest: float | None = None
    #: per shard: the newest ``txTime`` written (a shard is in journal order: its progress)
    newest_by_shard: dict[str, float] = field(default_factory=dict)

    @property
    def shards(self) -> set[str]:
        return set(self.newest_by_shard)


@dataclass
class _Buffer:
    first: Position | None = None
    rows: dict[Position, dict[str, Any]] = field(default_factory=dict)
    errors: dict[Position, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, Position] = field(default_factory=dict)
    duplicates: int = 0


class ExportHandler(Handler):
    """``ExportHandler(settings)`` (plugin form) or ``ExportHandler(storage=..., options=...)``."""

    name = "export"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        storage: Storage | None = None,
        errors: Storage | None = None,
        options: ExportOptions | None = None,
        clients: Callable[[str], Any] | None = None,
    ) -> None:
        where: dict[str, str] = {}
        if settings:
            if storage is not None or options is not None:
                raise ConfigurationError("export: give settings or storage and options, not both")
            options, where = ExportOptions.from_settings(settings)
        elif storage is None:
            raise ConfigurationError("export: set to (a directory or s3://bucket/prefix)")
        self.options = options or ExportOptions()
        self.format = self.options.file_format()
        self._partition = partition_function(self.options.partition)
        self._where = where
        self._clients = clients
        self.storage = storage
        self.errors = errors
        self.progress = ExportProgress()
        self.metrics: Metrics = NullMetrics()
        self._buffers: dict[str, _Buffer] = {}
        self._manifests: dict[str, ShardManifest] = {}
        self._start_ms = None if self.options.start is None else self.options.start.timestamp()
        self._end_ms = None if self.options.end is None else self.options.end.timestamp()

    def _open(self) -> None:
        if self.storage is not None and self.errors is not None:
            return
        client = None
        target = self._where.get("to", "")
        if "://" in target:
            client = self._clients("s3") if self._clients else None
        kwargs: dict[str, Any] = {
            "endpoint_url": self._where.get("endpoint_url"),
            "region": self._where.get("region"),
        }
        if self.storage is None:
            self.storage = open_storage(target, client=client, **kwargs)
        if self.errors is None:
            errors = self._where.get("errors") or self.storage.url("_errors")
            self.errors = open_storage(errors, client=client if "://" in errors else None, **kwargs)

    def setup(self, ctx: SetupContext) -> None:
        self.metrics = ctx.metrics
        self._open()

    # --- records ---------------------------------------------------------------------------
    def wants(self, record: JournalRecord) -> bool:
        if not isinstance(record, RevisionDetails):
            return False
        if self.options.tables is not None and record.table_name not in self.options.tables:
            return False
        if self._start_ms is None and self._end_ms is None:
            return True
        when = tx_time_utc(record).timestamp()
        return (self._start_ms is None or when >= self._start_ms) and (
            self._end_ms is None or when < self._end_ms
        )

    def _manifest(self, shard: str) -> ShardManifest:
        manifest = self._manifests.get(shard)
        if manifest is None:
            self._open()
            assert self.storage is not None
            manifest = ShardManifest.load(self.storage, shard, self.options.track_flushes)
            self._manifests[shard] = manifest
        return manifest

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "unknown"
        buffer = self._buffers.setdefault(shard, _Buffer())
        manifest = self._manifest(shard)
        for record in records:
            assert isinstance(record, RevisionDetails)
            pos = position_of(record)
            if buffer.first is None:
                buffer.first = pos
            key = f"{record.document_id}#{record.version}"
            seen = buffer.keys.get(key)
            earlier = manifest.position_of(key)
            if (seen is not None and seen != pos) or (earlier is not None and earlier < buffer.first):
                buffer.duplicates += 1  # the stream delivered this revision twice
                continue
            buffer.keys[key] = pos
            try:
                buffer.rows[pos] = revision_row(record, json_column=self.options.json_column)
            except RenderError as exc:
                buffer.errors[pos] = _error_line(record, shard, str(exc))

    # --- files -----------------------------------------------------------------------------
    def flush(self, ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "unknown"
        buffer = self._buffers.get(shard)
        if buffer is None or buffer.first is None:
            return
        if not buffer.rows and not buffer.errors:
            self.progress.duplicates += buffer.duplicates
            self._buffers.pop(shard)
            return
        self._open()
        assert self.storage is not None and self.errors is not None
        first = buffer.first
        files: dict[str, list[dict[str, Any]]] = {}
        for pos in sorted(buffer.rows):
            row = buffer.rows[pos]
            directory = self._partition(row["tx_time"], row["table_name"])
            files.setdefault(f"data:{directory}{file_name(shard, first, self.format.extension)}", []).append(
                row
            )
        if buffer.errors:
            files[f"errors:{file_name(shard, first, 'jsonl')}"] = [
                buffer.errors[p] for p in sorted(buffer.errors)
            ]
        started = time.monotonic()
        manifest = self._manifest(shard)
        stores = {"data": self.storage, "errors": self.errors}
        truncated = manifest.truncate(first, stores, self.format, set(files))
        positions = [*buffer.rows, *buffer.errors]
        manifest.add(Flush(first, max(positions), sorted(files), dict(buffer.keys)))
        manifest.save(self.storage)  # the intent, before the files
        for ref, rows in files.items():
            kind, _, path = ref.partition(":")
            if kind == "data":
                self.storage.put(path, self.format.encode(rows))
            else:
                self.errors.put(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        self._count(buffer, files, truncated, shard)
        self.metrics.observe("export_flush_seconds", time.monotonic() - started, shard=shard)
        self._buffers.pop(shard)

    def _count(
        self, buffer: _Buffer, files: dict[str, list[dict[str, Any]]], truncated: int, shard: str
    ) -> None:
        p = self.progress
        p.rows += len(buffer.rows)
        p.errors += len(buffer.errors)
        p.duplicates += buffer.duplicates
        p.files += len(files)
        p.truncated += truncated
        newest = max((r["tx_time"].timestamp() for r in buffer.rows.values()), default=None)
        if newest is not None:
            p.newest = newest if p.newest is None else max(p.newest, newest)
            p.newest_by_shard[shard] = max(p.newest_by_shard.get(shard, newest), newest)
        self.metrics.incr("export_rows", len(buffer.rows), shard=shard)
        self.metrics.incr("export_errors", len(buffer.errors), shard=shard)
        self.metrics.incr("export_duplicates", buffer.duplicates, shard=shard)
        if truncated:
            log.info("export: shard %s replayed from %s; %d rows rewritten", shard, buffer.first, truncated)

    def shard_released(self, shard_id: str) -> None:
        self._buffers.pop(shard_id, None)
        self._manifests.pop(shard_id, None)


def _error_line(record: RevisionDetails, shard: str, reason: str) -> dict[str, Any]:
    p = record.position
    when: datetime = tx_time_utc(record)
    return {
        "reason": reason,
        "shardId": shard,
        "sequenceNumber": p.sequence_number or "0",
        "subSequenceNumber": p.sub_sequence_number or 0,
        "table": record.table_name,
        "documentId": record.document_id,
        "version": record.version,
        "txId": record.tx_id,
        "txTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "record": b64encode(record.raw).decode("ascii"),
    }
