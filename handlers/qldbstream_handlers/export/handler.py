"""The export handler: verified revisions in a ``txTime`` range → partitioned, compressed files.

Lifecycle (see :mod:`qldbstream.api.handler`):

* ``wants`` - revisions of the chosen tables with ``start <= txTime < end``. The bounds are on the
  revision's commit time, as QLDB's own ``InclusiveStartTime``/``ExclusiveEndTime`` are, and not
  on Kinesis arrival: arrival depends on QLDB's put latency and on *when the stream was read* (a
  bounded stream created today for last year arrives today), so arrival cannot say which year a
  revision belongs to.
* ``handle_batch`` - one row per revision into the batch shard's buffer, keyed by the revision
  ``(documentId, version)`` (a retried chunk replaces its rows; another delivery of a buffered
  revision is a duplicate); data that cannot be rendered becomes an *error line* with its reason.
  The records need not be in any shard's position order, and may come from other shards (a
  parked record released by this batch's block summary, or journal order).
* ``flush`` - before the checkpoint and the done marks: drop the revisions the export already
  holds, then record the flush (pending), write one file per partition and one error file, each
  atomically under a deterministic name, record it committed (see :mod:`.manifest`). Written files
  are never rewritten.
* ``shard_released`` - drop the shard's unflushed rows (they are delivered again); read its
  bookkeeping again before its next flush.
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

from qldbstream.api import (
    ConfigurationError,
    Handler,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    RevisionDetails,
    SetupContext,
)
from qldbstream_handlers.export.layout import file_name, flush_stem, partition_function
from qldbstream_handlers.export.manifest import ExportIndex, Flush, Key
from qldbstream_handlers.export.options import ExportOptions
from qldbstream_handlers.export.schema import RenderError, position_of, revision_row, tx_time_utc
from qldbstream_handlers.export.storage import Storage, open_storage

__all__ = ["ExportHandler", "ExportProgress"]

log = logging.getLogger("qldbstream.handler.export")


@dataclass
class ExportProgress:
    """What has been written (counted at each successful flush): for progress bars and reports."""

    rows: int = 0
    errors: int = 0
    #: deliveries of a revision the export already holds (or holds twice in one flush): not written
    duplicates: int = 0
    files: int = 0
    #: revisions listed by flushes that did not finish (a crash mid-flush), whose files were
    #: deleted once a later flush had written every one of those revisions again
    reclaimed: int = 0
    #: the newest ``txTime`` written, epoch seconds
    newest: float | None = None
    #: per shard a row was read from: the newest ``txTime`` written (journal order: its progress)
    newest_by_shard: dict[str, float] = field(default_factory=dict)

    @property
    def shards(self) -> set[str]:
        return set(self.newest_by_shard)


#: Where a delivery was read from: (its own shard, sequence number, sub-sequence number).
_Where = tuple[str, int, int]


@dataclass
class _Buffer:
    """One batch shard's deliveries since its last flush, by revision."""

    where: dict[Key, _Where] = field(default_factory=dict)
    rows: dict[Key, dict[str, Any]] = field(default_factory=dict)
    errors: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: further deliveries (other positions) of a revision already in the buffer
    again: set[_Where] = field(default_factory=set)


class ExportHandler(Handler):
    """``ExportHandler(settings)`` (plugin form) or ``ExportHandler(storage=..., options=...)``.

    Not a :class:`~qldbstream.api.Router`: rows are buffered per partition and written as files in
    ``flush``, and its filter (tables and a time range) is the whole of its routing.
    """

    name = "export"
    #: every verified revision is a row, whatever order it comes in: an older version delivered
    #: after a newer one is exported too, never dropped
    late_policy = "deliver-late"

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
        self._loaded: ExportIndex | None = None
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

    def _index(self) -> ExportIndex:
        if self._loaded is None:
            self._open()
            assert self.storage is not None and self.errors is not None
            self._loaded = ExportIndex.load(self.storage, {"data": self.storage, "errors": self.errors})
            self.progress.reclaimed += self._tidy(self._loaded, None)  # flushes written again since
        return self._loaded

    @staticmethod
    def _tidy(index: ExportIndex, shard: str | None) -> int:
        """Collect interrupted flushes and fold the shard's records into its manifest when due;
        return the revisions collected. Best effort: each step is repeated by a later flush, and
        a flush that committed must not fail (retried, it would find its rows exported)."""
        try:
            reclaimed = index.collect()
            if shard is not None and index.due(shard):
                index.compact(shard)
        except Exception as exc:
            log.warning("export: tidying the bookkeeping failed (done at a later flush): %r", exc)
            return 0
        return reclaimed

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "unknown"
        staged: list[tuple[Key, _Where, dict[str, Any] | None, dict[str, Any] | None]] = []
        for record in records:
            assert isinstance(record, RevisionDetails)
            key = (record.document_id, record.version)
            where = (record.position.shard_id or shard, *position_of(record))
            try:
                staged.append((key, where, revision_row(record, json_column=self.options.json_column), None))
            except RenderError as exc:
                staged.append((key, where, None, _error_line(record, where[0], str(exc))))
        # all or nothing: a call that raised leaves the buffer as it was (the chunk is retried)
        buffer = self._buffers.setdefault(shard, _Buffer())
        for key, where, row, error in staged:
            held = buffer.where.get(key)
            if held is not None and held != where:
                buffer.again.add(where)  # the stream delivered this revision twice
                continue
            buffer.where[key] = where
            if row is not None:
                buffer.rows[key] = row
            elif error is not None:
                buffer.errors[key] = error

    # --- files -----------------------------------------------------------------------------
    def flush(self, ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "unknown"
        buffer = self._buffers.get(shard)
        if buffer is None:
            return
        index = self._index()
        index.claim(shard)
        rows = {k: r for k, r in buffer.rows.items() if not index.exported(k)}
        errors = {k: e for k, e in buffer.errors.items() if not index.exported(k)}
        duplicates = len(buffer.again) + len(buffer.rows) + len(buffer.errors) - len(rows) - len(errors)
        if not rows and not errors:
            self._count(shard, {}, {}, 0, duplicates, 0)
            self._buffers.pop(shard)
            return
        assert self.storage is not None and self.errors is not None
        keys = frozenset(rows) | frozenset(errors)
        stem = flush_stem(shard, min(buffer.where[k][1:] for k in keys), keys)
        files: dict[str, list[dict[str, Any]]] = {}
        for key in sorted(rows, key=lambda k: _journal_order(rows[k])):
            row = rows[key]
            directory = self._partition(row["tx_time"], row["table_name"])
            files.setdefault(f"data:{directory}{file_name(stem, self.format.extension)}", []).append(row)
        if errors:
            files[f"errors:{file_name(stem, 'jsonl')}"] = [errors[k] for k in sorted(errors)]
        started = time.monotonic()
        record = Flush(shard, stem, sorted(files), keys)
        index.begin(record)  # the intent, before the files
        for ref, content in files.items():
            kind, _, path = ref.partition(":")
            if kind == "data":
                self.storage.put(path, self.format.encode(content))
            else:
                self.errors.put(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in content).encode())
        index.commit(record)  # every file is there: these revisions are exported
        reclaimed = self._tidy(index, shard)
        self._count(shard, rows, errors, len(files), duplicates, reclaimed)
        self.metrics.observe("export_flush_seconds", time.monotonic() - started, shard=shard)
        self._buffers.pop(shard)

    def _count(
        self,
        shard: str,
        rows: dict[Key, dict[str, Any]],
        errors: dict[Key, dict[str, Any]],
        files: int,
        duplicates: int,
        reclaimed: int,
    ) -> None:
        p = self.progress
        p.rows += len(rows)
        p.errors += len(errors)
        p.duplicates += duplicates
        p.files += files
        p.reclaimed += reclaimed
        for row in rows.values():
            newest = row["tx_time"].timestamp()
            p.newest = newest if p.newest is None else max(p.newest, newest)
            own = row["shard_id"] or shard
            p.newest_by_shard[own] = max(p.newest_by_shard.get(own, newest), newest)
        self.metrics.incr("export_rows", len(rows), shard=shard)
        self.metrics.incr("export_errors", len(errors), shard=shard)
        self.metrics.incr("export_duplicates", duplicates, shard=shard)
        if reclaimed:
            log.info(
                "export: deleted the files of interrupted flushes (%d revisions, written again)", reclaimed
            )

    def shard_released(self, shard_id: str) -> None:
        self._buffers.pop(shard_id, None)
        if self._loaded is not None:
            self._loaded.release(shard_id)


def _journal_order(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["block_strand_id"], row["block_sequence_no"], row["document_id"], row["version"])


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
        **_record_fields(record),
    }


def _record_fields(record: RevisionDetails) -> dict[str, Any]:
    """The record itself: its raw bytes (base64) - or, masking on, only its masked data as Ion
    text (``maskedData``; ``null`` when even that cannot be written): the raw bytes hold what
    masking hides, and the source stream or the DLQ still has them."""
    if record.masker is None:
        return {"record": b64encode(record.raw).decode("ascii")}
    from amazon.ion import simpleion

    try:  # ``data`` is masked already (the pipeline masked the record)
        masked = str(simpleion.dumps(record.data, binary=False)).removeprefix("$ion_1_0 ")
    except Exception:  # the data cannot be written as Ion text (why it is an error line)
        masked = None
    return {"record": None, "maskedData": masked}
