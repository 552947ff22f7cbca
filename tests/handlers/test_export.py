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
    ExportOptions,
    LocalStorage,
    Storage,
    arrow_schema,
)

from qldbstream.deaggregate import deaggregate
from qldbstream.decode import RevisionDetails, decode
from qldbstream.dedupe import InMemoryDedupeStore, LatePolicy
from qldbstream.errors import ConfigurationError
from qldbstream.handler import SetupContext
from qldbstream.metrics import InMemoryMetrics
from qldbstream.pipeline import Pipeline, PipelineSettings
from qldbstream.plugins import load_handler
from qldbstream.records import KinesisRecord
from qldbstream.simulate import LedgerRevision, Simulation
from qldbstream.simulate.values import ion_text
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


def test_a_replay_in_smaller_batches_rewrites_and_deletes_the_files_it_supersedes(
    crashy: Simulation, tmp_path: Path
) -> None:
    records = kinesis_records(crashy)
    options = ExportOptions(partition="table=TABLE/year=YYYY/")
    first = export(records, tmp_path, options, size=12)
    files = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")}
    # The checkpoints were lost after the files were written: everything is read again, in batches
    # of 2 - every earlier file is superseded (same first record, other tables, other boundaries).
    again = export(records, tmp_path, options, size=2)
    check_rows(read(tmp_path), crashy.ledger.revisions)
    assert again.progress.truncated > 0 and first.progress.truncated == 0
    assert files - {p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")}  # some were deleted


def test_the_stream_own_duplicates_across_a_restart_are_skipped(tmp_path: Path) -> None:
    """The same revision delivered again (new sequence number) after a restart is not a new row."""
    sim = simulation(40, seed=2, aggregate=False)
    ((shard, records),) = kinesis_records(sim).items()
    export({shard: records}, tmp_path)
    replayed = records[-6:]  # a producer retry put the tail again (fresh sequence numbers)
    again = [
        KinesisRecord(r.data, str(int(records[-1].sequence_number) + 10 * (i + 1)), r.partition_key, shard)
        for i, r in enumerate(replayed)
    ]
    handler = export({shard: again}, tmp_path)
    check_rows(read(tmp_path), sim.ledger.revisions)
    revisions = [u for r in replayed for u in deaggregate(r) if isinstance(decode(u), RevisionDetails)]
    assert revisions and handler.progress.duplicates == len(revisions) and handler.progress.rows == 0


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
