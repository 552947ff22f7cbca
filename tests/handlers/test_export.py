"""The export handler on simulated ledgers through the real pipeline, to a local directory: rows
equal the simulator's ledger exactly (every revision in range once, none outside), partitioning,
compression, the schema, messy delivery, crashes mid-flush with resumption, the error prefix."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from qldbstream_handlers.export import (
    COLUMNS,
    ErrorPrefixDeadLetterQueue,
    ExportHandler,
    ExportIndex,
    ExportOptions,
    LocalStorage,
    Storage,
    arrow_schema,
)
from qldbstream_handlers.export.manifest import Flush
from qldbstream_tools.simulate import LedgerRevision, Simulation
from qldbstream_tools.simulate.values import ion_text

from qldbstream.api.handler import HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.plugins import load_handler
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails, decode
from qldbstream.core.dedupe import DedupeStore, LatePolicy, Watermark
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline, PipelineSettings
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.functional.test_pipeline import FakeTime
from tests.support.streams import batches, kinesis_records, simulation

# -- helpers -----------------------------------------------------------------------------------


def export(
    records: dict[str, list[KinesisRecord]],
    root: Path,
    options: ExportOptions | None = None,
    *,
    size: int = 9,
    storage: Storage | None = None,
    errors: Storage | None = None,
    start: dict[str, int] | None = None,
    checkpoints: dict[str, int] | None = None,
) -> ExportHandler:
    """Run the export over every shard (batches in turn, like the worker); record checkpoints as
    indexes of the next Kinesis record to read."""
    errors = errors or LocalStorage(root / "_errors")
    handler = ExportHandler(
        storage=storage or LocalStorage(root), errors=errors, options=options or ExportOptions()
    )
    handler.setup(SetupContext({}, logging.getLogger("test"), InMemoryMetrics()))
    t = FakeTime()
    pipeline = Pipeline(
        [handler],
        dlq=ErrorPrefixDeadLetterQueue(errors),
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(late_policy=LatePolicy.DELIVER_LATE),
        clock=t.clock,
        sleep=t.sleep,
    )
    positions = dict(start or {})
    queues = {s: batches(r[positions.get(s, 0) :], size) for s, r in sorted(records.items())}
    while any(queues.values()):
        for shard, queue in queues.items():
            if not queue:
                continue
            batch = queue.pop(0)
            result = pipeline.process(shard, batch)
            assert not result.halted, result.halt_reason
            assert result.first_unfinished is None
            positions[shard] = positions.get(shard, 0) + len(batch)
            if checkpoints is not None:
                checkpoints[shard] = positions[shard]
    return handler


def read(root: Path) -> list[dict[str, Any]]:
    dataset = ds.dataset(root, format="parquet", partitioning="hive")  # skips _export/ and _errors/
    return dataset.to_table().to_pylist()


def tx_time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def check_rows(rows: list[dict[str, Any]], expected: Sequence[LedgerRevision]) -> None:
    """Every expected revision exactly once, and every column equal to the ledger's truth."""
    keys = Counter((r["document_id"], r["version"]) for r in rows)
    assert set(keys.values()) <= {1}, [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == {(r.document_id, r.version) for r in expected}
    by_key = {(r["document_id"], r["version"]): r for r in rows}
    for rev in expected:
        row = by_key[(rev.document_id, rev.version)]
        assert (row["table_name"], row["table_id"], row["tx_id"]) == (rev.table, rev.table_id, rev.tx_id)
        assert row["tx_time"] == tx_time(rev.tx_time_ms) and row["block_sequence_no"] == rev.sequence_no
        assert row["revision_hash"] == rev.hash and row["verified"] is True
        assert row["operation"] == ("redacted" if rev.redacted else rev.op)
        assert row["is_deleted"] == (rev.op == "delete") and row["is_redacted"] == rev.redacted
        if rev.redacted:
            assert row["data_ion"] is None and row["data_hash"] == rev.data_hash
        elif rev.data is None:
            assert row["data_ion"] is None and row["data_json"] is None
        else:
            assert row["data_ion"] == ion_text(rev.data)  # lossless: the exact Ion text
            data = json.loads(row["data_json"], parse_float=Decimal)
            if rev.table == "Transactions":
                assert data["amount"] == rev.data["amount"] and data["accountId"] == rev.data["accountId"]


@pytest.fixture(scope="module")
def bank() -> Simulation:
    """Two shards, KPL-aggregated, 15 % duplicates, with deletes and redactions."""
    return simulation(100, seed=21, shards=2, duplicates=0.15, deletes=5, redactions=4)


# -- the whole ledger ----------------------------------------------------------------------------


def test_the_export_equals_the_ledger(bank: Simulation, tmp_path: Path) -> None:
    handler = export(kinesis_records(bank), tmp_path)
    rows = read(tmp_path)
    check_rows(rows, bank.ledger.revisions)
    assert any(r.redacted for r in bank.ledger.revisions) and any(
        r.op == "delete" for r in bank.ledger.revisions
    )
    assert {r["year"] for r in rows} == {2024}
    assert handler.progress.rows == len(rows) and handler.progress.errors == 0
    assert all(
        p.name.startswith("shardId-") and p.parent.name == "year=2024" for p in tmp_path.rglob("*.parquet")
    )


def test_the_schema_is_the_documented_one(bank: Simulation, tmp_path: Path) -> None:
    export(kinesis_records(bank), tmp_path)
    schema = pq.read_schema(next(tmp_path.rglob("*.parquet")))
    assert tuple(schema.names) == COLUMNS and schema.equals(arrow_schema())
    assert schema.field("tx_time").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("sequence_number").type == pa.string()


def test_time_range_is_inclusive_start_and_exclusive_end_by_tx_time(bank: Simulation, tmp_path: Path) -> None:
    times = sorted({r.tx_time_ms for r in bank.ledger.revisions})
    start, end = times[len(times) // 4], times[3 * len(times) // 4]
    export(kinesis_records(bank), tmp_path, ExportOptions(start=tx_time(start), end=tx_time(end)))
    inside = [r for r in bank.ledger.revisions if start <= r.tx_time_ms < end]
    check_rows(read(tmp_path), inside)
    assert any(r.tx_time_ms == start for r in inside)  # the start itself is in
    assert any(r.tx_time_ms == end for r in bank.ledger.revisions)  # ... and the end itself out


@pytest.mark.parametrize(
    ("partition", "compression", "levels"),
    [("year=YYYY/month=MM/", "gzip", ("year", "month")), ("table=TABLE/date=YYYY-MM-DD/HH/", "zstd", None)],
)
def test_partitioning_and_compression(
    bank: Simulation, tmp_path: Path, partition: str, compression: str, levels: tuple[str, ...] | None
) -> None:
    export(kinesis_records(bank), tmp_path, ExportOptions(partition=partition, compression=compression))
    files = sorted(tmp_path.rglob("*.parquet"))
    assert files and all(
        pq.ParquetFile(f).metadata.row_group(0).column(0).compression == compression.upper() for f in files
    )
    if levels is not None:
        rows = read(tmp_path)
        assert {(r["year"], r["month"]) for r in rows} == {(2024, 3)}
        check_rows(rows, bank.ledger.revisions)
        return
    tables = {f.relative_to(tmp_path).parts[0] for f in files}
    assert tables == {f"table={t}" for t in ("Customers", "Accounts", "Transactions")}
    for f in files:
        table, day, hour = f.relative_to(tmp_path).parts[:3]
        (row,) = pq.read_table(f, columns=["table_name", "tx_time"]).slice(0, 1).to_pylist()
        assert table == f"table={row['table_name']}" and day == f"date={row['tx_time']:%Y-%m-%d}"
        assert hour == f"{row['tx_time']:%H}"


def test_json_lines_format(bank: Simulation, tmp_path: Path) -> None:
    export(kinesis_records(bank), tmp_path, ExportOptions(format="jsonl"))
    lines = [
        json.loads(line)
        for f in tmp_path.rglob("*.jsonl.gz")
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    for line in lines:
        line["tx_time"] = datetime.fromisoformat(line["tx_time"])
        for key in ("revision_hash", "data_hash"):
            line[key] = None if line[key] is None else base64.b64decode(line[key])
    check_rows(lines, bank.ledger.revisions)


def test_non_aggregated_multi_shard_delivery_with_duplicates_and_reordering(tmp_path: Path) -> None:
    sim = simulation(60, seed=4, shards=3, aggregate=False, duplicates=0.3, reorder=5)
    handler = export(kinesis_records(sim), tmp_path, size=4)
    check_rows(read(tmp_path), sim.ledger.revisions)
    assert handler.progress.rows == len(sim.ledger.revisions)


# -- crashes ---------------------------------------------------------------------------------------


class Crash(BaseException):
    """The process dies (not an Exception: nothing in the pipeline may catch it)."""


class CrashingStorage:
    """A storage that dies at its n-th write or delete; ``ops`` is shared between instances."""

    def __init__(self, inner: Storage, ops: list[int], crash_at: int | None) -> None:
        self.inner, self.ops, self.crash_at = inner, ops, crash_at

    def _tick(self) -> None:
        self.ops[0] += 1
        if self.ops[0] == self.crash_at:
            raise Crash(f"killed at write {self.ops[0]}")

    def put(self, path: str, data: bytes) -> None:
        self._tick()
        self.inner.put(path, data)

    def delete(self, path: str) -> None:
        self._tick()
        self.inner.delete(path)

    def get(self, path: str) -> bytes | None:
        return self.inner.get(path)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def url(self, path: str = "") -> str:
        return self.inner.url(path)


@pytest.fixture(scope="module")
def crashy() -> Simulation:
    """Duplicates close together (so some straddle a restart), two aggregated shards."""
    return simulation(50, seed=8, shards=2, duplicates=0.3, deletes=3, redactions=2)


@pytest.mark.parametrize("kills", [(1,), (2,), (3,), (7,), (4, 2), (9, 5, 1)])
def test_killed_mid_export_resumes_from_the_checkpoint_without_duplicate_rows(
    crashy: Simulation, tmp_path: Path, kills: tuple[int, ...]
) -> None:
    records = kinesis_records(crashy)
    checkpoints: dict[str, int] = {}
    # partitions by table: a replay in smaller batches lacks some tables, whose stale files must go
    options = ExportOptions(partition="table=TABLE/year=YYYY/")
    for n, kill in enumerate(kills):
        ops = [0]
        data = CrashingStorage(LocalStorage(tmp_path), ops, kill)
        errors = CrashingStorage(LocalStorage(tmp_path / "_errors"), ops, kill)
        with pytest.raises(Crash):
            # batch sizes shrink between runs: file boundaries differ from the crashed run's
            export(
                records,
                tmp_path,
                options,
                size=8 - 2 * n,
                storage=data,
                errors=errors,
                start=dict(checkpoints),
                checkpoints=checkpoints,
            )
    export(records, tmp_path, options, size=2, start=dict(checkpoints))
    check_rows(read(tmp_path), crashy.ledger.revisions)
    manifests = list((tmp_path / "_export" / "shards").glob("*.json"))
    assert len(manifests) == 2


def test_a_replay_in_smaller_batches_adds_nothing_and_rewrites_nothing(
    crashy: Simulation, tmp_path: Path
) -> None:
    records = kinesis_records(crashy)
    options = ExportOptions(partition="table=TABLE/year=YYYY/")
    first = export(records, tmp_path, options, size=12)
    files = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    # The checkpoints were lost after the files were written: everything is read again, in batches
    # of 2 (other boundaries, other tables per flush). Each revision is already exported: no file
    # is written, rewritten or deleted - what a replay re-delivers is not what a checkpoint says.
    again = export(records, tmp_path, options, size=2)
    check_rows(read(tmp_path), crashy.ledger.revisions)
    assert first.progress.rows == len(crashy.ledger.revisions)
    assert again.progress.rows == again.progress.files == 0
    assert again.progress.duplicates == first.progress.rows  # the stream's own: the pipeline's
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.parquet")} == files


def test_the_stream_own_duplicates_across_a_restart_are_skipped(tmp_path: Path) -> None:
    """The same revision delivered again (new sequence number) after a restart is not a new row."""
    sim = simulation(40, seed=2, aggregate=False)
    ((shard, records),) = kinesis_records(sim).items()
    export({shard: records}, tmp_path)
    # A producer retry put the tail again (fresh sequence numbers), from a block summary on: a
    # revision is delivered only with its block summary (a re-put revision whose summary is not
    # in the input stays parked: it is never verified, so never delivered).
    summaries = [i for i, r in enumerate(records) if isinstance(decode(deaggregate(r)[0]), BlockSummary)]
    replayed = records[summaries[-2] :]
    again = [
        KinesisRecord(r.data, str(int(records[-1].sequence_number) + 10 * (i + 1)), r.partition_key, shard)
        for i, r in enumerate(replayed)
    ]
    handler = export({shard: again}, tmp_path)
    check_rows(read(tmp_path), sim.ledger.revisions)
    revisions = [u for r in replayed for u in deaggregate(r) if isinstance(decode(u), RevisionDetails)]
    assert revisions and handler.progress.duplicates == len(revisions) and handler.progress.rows == 0


# -- out of position order, across shards, then a crash ------------------------------------------


class RecordingExport(ExportHandler):
    """The export, remembering each delivery: the batch's shard, the record's own shard and
    sequence number, the revision."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deliveries: list[tuple[str | None, str, int, tuple[str, int]]] = []

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for r in records:
            assert isinstance(r, RevisionDetails)
            p = r.position
            self.deliveries.append(
                (ctx.shard_id, p.shard_id or "", int(p.sequence_number or 0), (r.document_id, r.version))
            )
        super().handle_batch(records, ctx)


class CrashingDoneMarks:
    """A de-duplication store that dies at its n-th ``mark_done``: the export's flush returned, the
    framework has not recorded the batch as done."""

    def __init__(self, inner: InMemoryDedupeStore, crash_at: int | None) -> None:
        self.inner, self.crash_at, self.calls = inner, crash_at, 0

    def done(self, handler: str, keys: Sequence[str]) -> set[str]:
        return self.inner.done(handler, keys)

    def mark_done(self, handler: str, keys: Sequence[str]) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"killed before done mark {self.calls}")
        self.inner.mark_done(handler, keys)

    def watermarks(self, handler: str, document_ids: Sequence[str]) -> dict[str, Watermark]:
        return self.inner.watermarks(handler, document_ids)

    def advance(self, handler: str, marks: dict[str, Watermark]) -> None:
        self.inner.advance(handler, marks)


def resume(
    records: dict[str, list[KinesisRecord]],
    handler: ExportHandler,
    store: DedupeStore,
    checkpoints: dict[str, tuple[str, int]],
    *,
    size: int,
) -> None:
    """Run like the worker, but with real checkpoints: each shard's batches in turn, read from
    after its checkpoint; a checkpoint moves as the batch result says - the batch's own shard's,
    and the other shards' whose parked records it delivered - so it stays before what its shard
    parked. The end of the input decides what still waits (``drain``)."""
    handler.setup(SetupContext({}, logging.getLogger("test"), InMemoryMetrics()))
    t = FakeTime()
    assert handler.errors is not None
    pipeline = Pipeline(
        [handler],
        dlq=ErrorPrefixDeadLetterQueue(handler.errors),
        store=store,
        settings=PipelineSettings(late_policy=LatePolicy.DELIVER_LATE),
        clock=t.clock,
        sleep=t.sleep,
    )

    def save(result: BatchResult) -> None:
        if result.shard_id is not None and result.checkpoint is not None:
            checkpoints[result.shard_id] = result.checkpoint
        for other, checkpoint in result.other_checkpoints.items():
            if other is not None:
                checkpoints[other] = checkpoint

    def unread(shard: str, r: KinesisRecord) -> bool:
        return shard not in checkpoints or int(r.sequence_number) > int(checkpoints[shard][0])

    queues = {s: batches([r for r in rs if unread(s, r)], size) for s, rs in sorted(records.items())}
    while any(queues.values()):
        for shard, queue in queues.items():
            if queue:
                result = pipeline.process(shard, queue.pop(0))
                assert not result.halted, result.halt_reason
                save(result)
    save(pipeline.drain())


class DyingStorage(CrashingStorage):
    """Dies at the n-th write of one step of a flush: its ``intent`` (the flush record, pending),
    a ``data`` file, its ``commit`` (the flush record, committed)."""

    def __init__(self, inner: Storage, counts: Counter[str], stage: str | None, n: int) -> None:
        super().__init__(inner, [0], None)
        self.counts, self.stage, self.n = counts, stage, n

    def put(self, path: str, data: bytes) -> None:
        step = None
        if path.endswith(".parquet"):
            step = "data"
        elif path.startswith("_export/shards/") and path.count("/") == 3:
            step = "commit" if json.loads(data)["state"] == "committed" else "intent"
        if step is not None:
            self.counts[step] += 1
            if step == self.stage and self.counts[step] == self.n:
                raise Crash(f"killed at {step} {self.n}")
        self.inner.put(path, data)


@pytest.mark.parametrize("done_marks_survive", [False, True], ids=["done-marks-lost", "done-marks-kept"])
@pytest.mark.parametrize(
    "kill",
    [("intent", 16), ("data", 17), ("commit", 17), ("done-marks", 4), ("done-marks", 17)],
    ids=lambda k: f"{k[0]}-{k[1]}",
)
def test_records_out_of_shard_order_across_batch_contexts_then_a_crash_and_a_re_read(
    tmp_path: Path, kill: tuple[str, int], done_marks_survive: bool
) -> None:
    """Without aggregation a revision that arrives before its block summary is parked and delivered
    in another shard's batch, after later records of its own shard; its shard's checkpoint stays
    before it while those later records are exported and marked done. The process dies - before a
    flush's intent, between its intent and its commit, or after a flush before the framework's done
    marks - and each shard is read again from its checkpoint: what was exported after it comes again
    (done marks lost) or is skipped (done marks kept: never delivered again). Every revision of the
    ledger is exported exactly once, and no interrupted flush leaves a file behind."""
    sim = simulation(30, seed=5, shards=2, aggregate=False, duplicates=0.2, reorder=8)
    records = kinesis_records(sim)
    marks = InMemoryDedupeStore()
    checkpoints: dict[str, tuple[str, int]] = {}
    stage, n = kill
    counts: Counter[str] = Counter()
    crashing = RecordingExport(
        storage=DyingStorage(LocalStorage(tmp_path), counts, stage, n),
        errors=LocalStorage(tmp_path / "_errors"),
        options=ExportOptions(),
    )
    dying_marks = CrashingDoneMarks(marks, n if stage == "done-marks" else None)
    with pytest.raises(Crash):
        resume(records, crashing, dying_marks, checkpoints, size=4)

    # What the crashed run did - the case this test is about:
    seen = crashing.deliveries
    assert any(batch != own for batch, own, _, _ in seen)  # delivered in another shard's batch
    by_shard: dict[str, list[int]] = {}
    for _, own, seq, _ in seen:
        by_shard.setdefault(own, []).append(seq)
    assert any(seqs != sorted(seqs) for seqs in by_shard.values())  # a shard out of position order
    index = ExportIndex.load(LocalStorage(tmp_path), {"data": LocalStorage(tmp_path)})
    behind = {
        key
        for _, own, seq, key in seen
        if own in checkpoints and seq > int(checkpoints[own][0]) and index.exported(key)
    }
    assert behind  # exported, and its shard will be read again from a checkpoint before it
    interrupted = [f for m in index.shards.values() for f in m.flushes.values() if not f.committed]
    assert bool(interrupted) == (stage in ("data", "commit"))

    after = RecordingExport(
        storage=LocalStorage(tmp_path), errors=LocalStorage(tmp_path / "_errors"), options=ExportOptions()
    )
    resume(records, after, marks if done_marks_survive else InMemoryDedupeStore(), checkpoints, size=3)

    rows = read(tmp_path)
    check_rows(rows, sim.ledger.revisions)  # the ledger's revisions, each exactly once
    assert len(rows) == len(sim.ledger.revisions)
    again = {key for _, _, _, key in after.deliveries}
    if done_marks_survive and stage != "done-marks":
        assert not behind & again  # skipped as done: never delivered again, and not lost
    else:
        assert behind & again and after.progress.duplicates > 0  # delivered again, not written again
    index = ExportIndex.load(LocalStorage(tmp_path), {"data": LocalStorage(tmp_path)})
    assert all(f.committed for m in index.shards.values() for f in m.flushes.values())
    assert after.progress.reclaimed == sum(len(f.keys) for f in interrupted)


def test_flush_records_are_folded_into_the_shard_manifests(bank: Simulation, tmp_path: Path) -> None:
    """One record per flush, folded into the shard's manifest as they pile up (in the run) and when
    a process first flushes the shard (the next run): the union always holds every revision."""
    first = export(kinesis_records(bank), tmp_path, size=1)
    shards = tmp_path / "_export" / "shards"
    records = [p for d in shards.iterdir() if d.is_dir() for p in d.iterdir()]
    manifests = {p.stem: json.loads(p.read_bytes())["revisions"] for p in shards.glob("*.json")}
    folded = {(d, v) for m in manifests.values() for d, vs in m.items() for v in vs}
    pending = {
        (d, v) for p in records for d, vs in json.loads(p.read_bytes())["revisions"].items() for v in vs
    }
    assert folded and records  # folded during the run (a manifest starts empty), records since
    assert folded | pending == {(r.document_id, r.version) for r in bank.ledger.revisions}
    assert first.progress.rows == len(bank.ledger.revisions)
    again = export(kinesis_records(bank), tmp_path, size=5)
    assert again.progress.rows == 0 and again.progress.duplicates == len(bank.ledger.revisions)
    assert not [p for d in shards.iterdir() if d.is_dir() for p in d.iterdir()]  # ... and on a claim
    check_rows(read(tmp_path), bank.ledger.revisions)


def test_a_version_1_manifest_is_read_and_its_unfinished_flush_collected(tmp_path: Path) -> None:
    """A destination written by the position-keyed export (a manifest of recent flushes, each entry
    written before its files): a flush whose files are all there is exported; one that did not
    finish is pending - its orphan file goes once a new flush holds its revisions."""
    storage = LocalStorage(tmp_path)
    shard = "shardId-000000000000"
    for path in ("year=2024/a.parquet", "year=2024/b.parquet"):
        storage.put(path, b"rows")
    flushes = [
        {
            "first": ["10", 0],
            "last": ["10", 0],
            "files": ["data:year=2024/a.parquet"],
            "keys": {"d1#0": ["10", 0]},
        },
        {
            "first": ["12", 0],
            "last": ["13", 0],
            "files": ["data:year=2024/b.parquet", "data:year=2024/c.parquet"],  # c: never written
            "keys": {"d2#0": ["12", 0], "d2#1": ["13", 0]},
        },
    ]
    doc = {"version": 1, "shard": shard, "flushes": flushes}
    storage.put(f"_export/shards/{shard}.json", json.dumps(doc).encode())
    index = ExportIndex.load(storage, {"data": storage, "errors": storage})
    assert index.exported(("d1", 0)) and not index.exported(("d2", 0))
    index.claim(shard)  # rewritten as version 2; the unfinished flush keeps a record of its own
    manifest = json.loads(storage.get(f"_export/shards/{shard}.json") or b"")
    assert manifest["version"] == 2 and manifest["revisions"] == {"d1": [0]}
    again = ExportIndex.load(storage, {"data": storage, "errors": storage})
    (pending,) = again.shards[shard].flushes.values()
    assert not pending.committed and pending.keys == {("d2", 0), ("d2", 1)}
    storage.put("year=2024/new.parquet", b"rows")
    index.commit(Flush(shard, "new", ["data:year=2024/new.parquet"], frozenset({("d2", 0), ("d2", 1)})))
    assert index.collect() == 2
    assert storage.list("year=2024/") == ["year=2024/a.parquet", "year=2024/new.parquet"]
    assert not storage.list(f"_export/shards/{shard}/v1-")


# -- the error prefix ------------------------------------------------------------------------------


def test_unwritable_and_unverified_records_go_under_the_error_prefix_with_the_reason(tmp_path: Path) -> None:
    # A forger who recomputed every hash slipped in a NaN float (JSON cannot hold it); another
    # revision was tampered without rehashing (verification fails: the pipeline dead-letters it).
    sim = simulation(
        40, seed=3, tampers=("Transactions#2+rehash-block:data.note=nan", "Transactions#5:data.amount")
    )
    export(kinesis_records(sim), tmp_path, ExportOptions(json_column=True))
    (error_file,) = (tmp_path / "_errors").glob("*.jsonl")
    (line,) = [json.loads(x) for x in error_file.read_text().splitlines()]
    assert "nan has no JSON form" in line["reason"] and line["table"] == "Transactions"
    assert b"REVISION_DETAILS" in base64.b64decode(line["record"])  # the raw Ion record is kept
    letters = [json.loads(p.read_text()) for p in (tmp_path / "_errors" / "dead-letters").rglob("*.json")]
    v2 = [x for x in letters if x["document_id"] is not None]
    assert len(v2) == 1 and v2[0]["stage"] == "verify" and "V2" in v2[0]["error_message"]
    unverified = {(f.document_id, f.version) for f in sim.expected.failures if f.document_id}
    rows = read(tmp_path)
    assert not {(r["document_id"], r["version"]) for r in rows} & (
        unverified | {(line["documentId"], line["version"])}
    )
    good = [
        r
        for r in sim.ledger.revisions
        if (r.document_id, r.version) not in unverified | {(line["documentId"], line["version"])}
    ]
    assert len(rows) == len(good)


def test_plugin_settings(bank: Simulation, tmp_path: Path) -> None:
    handler = load_handler(
        "qldbstream_handlers.export:ExportHandler",
        {
            "to": str(tmp_path),
            "partition": "year=YYYY/month=MM/",
            "compression": "zstd",
            "tables": "Accounts",
        },
    )
    assert isinstance(handler, ExportHandler) and handler.options.tables == frozenset({"Accounts"})
    export(kinesis_records(bank), tmp_path, handler.options)
    check_rows(read(tmp_path), [r for r in bank.ledger.revisions if r.table == "Accounts"])
    bad: list[dict[str, str]] = [
        {},
        {"to": "x", "colour": "red"},
        {"to": "ftp://x"},
        {"to": "x", "json": "maybe"},
        {"to": "x", "from": "2024-01-01"},
        {"to": "x", "format": "csv"},
    ]
    for settings in bad:
        with pytest.raises(ConfigurationError):
            load_handler("qldbstream_handlers.export:ExportHandler", settings)
