"""The PostgreSQL migration on a real server (tests/support/postgres.py): a simulated ledger through
the real pipeline; current state equals the simulator's ledger; a redelivery of everything
changes no row; revisions in any order give the same tables (an older version never overwrites a
newer one); ``qldbstream pg-verify`` passes the migration and names exactly the row tampered in SQL.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from amazon.ion.equivalence import ion_equals
from psycopg import sql
from qldbstream_handlers.postgres import (
    PostgresHandler,
    PostgresOptions,
    from_jsonb,
    table_names,
    verify_tables,
)
from qldbstream_tools.simulate import LedgerRevision, Simulation

from qldbstream import ion_hash
from qldbstream.api.handler import HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.plugins import load_handler
from qldbstream.cli.command import main
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import batches, kinesis_records, simulation

TABLES = ("Customers", "Accounts", "Transactions")


@pytest.fixture(scope="module")
def bank() -> Simulation:
    """Two shards, KPL-aggregated, duplicates and reordering, with deletes and redactions."""
    return simulation(150, seed=21, shards=2, duplicates=0.15, reorder=4, deletes=8, redactions=4)


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"m_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def migrate_through_pipeline(sim: Simulation, dsn: str, schema: str, size: int = 11) -> PostgresHandler:
    """Every shard through the real pipeline (batches in turn, like the worker)."""
    handler = PostgresHandler(options=PostgresOptions(dsn=dsn, schema=schema))
    handler.setup(SetupContext({}, logging.getLogger("test"), InMemoryMetrics()))
    t = FakeTime()
    dlq = MemoryDLQ()
    pipeline = Pipeline(
        [handler],
        dlq=dlq,
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(late_policy=LatePolicy.DELIVER_LATE),
        clock=t.clock,
        sleep=t.sleep,
    )
    queues = {s: batches(r, size) for s, r in sorted(kinesis_records(sim).items())}
    while any(queues.values()):
        for shard, queue in queues.items():
            if queue:
                result = pipeline.process(shard, queue.pop(0))
                assert not result.halted, result.halt_reason
                assert result.first_unfinished is None
    assert not dlq.letters, [(d.stage, d.error_message) for d in dlq.letters]
    return handler


def revisions_of(sim: Simulation) -> list[RevisionDetails]:
    """Every revision of the stream once, as decoded records (duplicates dropped)."""
    seen: dict[tuple[str, int], RevisionDetails] = {}
    for records in kinesis_records(sim).values():
        for kinesis_record in records:
            for user in deaggregate(kinesis_record):
                record = decode(user)
                if isinstance(record, RevisionDetails):
                    seen.setdefault((record.document_id, record.version), record)
    return list(seen.values())


def deliver(handler: PostgresHandler, records: Sequence[RevisionDetails], size: int = 7) -> None:
    ctx = HandlerContext(handler.name, "shardId-000000000000")
    for i in range(0, len(records), size):
        handler.handle_batch(records[i : i + size], ctx)


def snapshot(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every migrated table, with its xmin (which changes when a row is rewritten)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for table in TABLES:
            names = table_names(schema, "", table)
            for kind, ident in (("history", names.history_id()), ("current", names.current_id())):
                query = sql.SQL("SELECT xmin::text, * FROM {} ORDER BY document_id, version").format(ident)
                out[f"{table}.{kind}"] = conn.execute(query).fetchall()
    return out


def rows(dsn: str, schema: str, table: str, kind: str) -> list[dict[str, Any]]:
    names = table_names(schema, "", table)
    ident = names.history_id() if kind == "history" else names.current_id()
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(sql.SQL("SELECT * FROM {} ORDER BY document_id, version").format(ident)).fetchall()


def status_of(rev: LedgerRevision) -> str:
    return "deleted" if rev.op == "delete" else "redacted" if rev.redacted else "live"


def check_row(row: dict[str, Any], rev: LedgerRevision) -> None:
    assert (row["document_id"], row["version"], row["table_id"]) == (
        rev.document_id,
        rev.version,
        rev.table_id,
    )
    assert row["tx_id"] == rev.tx_id and row["block_sequence_no"] == rev.sequence_no
    assert int(row["tx_time"].timestamp() * 1000) == rev.tx_time_ms
    assert bytes(row["revision_hash"]) == rev.hash
    assert row["status"] == status_of(rev) and row["deleted"] == (rev.op == "delete")
    if row["status"] == "live":
        data = from_jsonb(row["data"])
        assert ion_equals(data, rev.data) and ion_hash(data) == ion_hash(rev.data)
        assert row["data_hash"] is None
    else:
        assert row["data"] is None
        assert (bytes(row["data_hash"]) if row["data_hash"] is not None else None) == (
            rev.data_hash if rev.redacted else None
        )


def check_migration(sim: Simulation, dsn: str, schema: str) -> None:
    """History holds every revision once; current state is each document's newest revision,
    computed here from the simulator's own ledger."""
    ledger = sim.ledger
    for table in TABLES:
        revs = [r for r in ledger.revisions if r.table == table]
        history = rows(dsn, schema, table, "history")
        assert [(r["document_id"], r["version"]) for r in history] == sorted(
            (r.document_id, r.version) for r in revs
        )
        by_key = {(r.document_id, r.version): r for r in revs}
        for row in history:
            check_row(row, by_key[(row["document_id"], row["version"])])
        newest: dict[str, LedgerRevision] = {}
        for rev in revs:
            if rev.document_id not in newest or rev.version > newest[rev.document_id].version:
                newest[rev.document_id] = rev
        current = rows(dsn, schema, table, "current")
        assert [r["document_id"] for r in current] == sorted(newest)
        for row in current:
            rev = newest[row["document_id"]]
            check_row(row, rev)
            state = ledger.documents[row["document_id"]]  # the simulator's final state agrees
            assert (state.version, state.deleted) == (rev.version, row["deleted"])


def test_the_migration_equals_the_ledger(bank: Simulation, postgres_dsn: str, schema: str) -> None:
    revs = bank.ledger.revisions
    assert any(r.op == "delete" for r in revs) and any(r.redacted for r in revs)
    assert {r.table for r in revs} == set(TABLES)
    handler = migrate_through_pipeline(bank, postgres_dsn, schema)
    check_migration(bank, postgres_dsn, schema)
    metrics: Any = handler.metrics
    assert metrics.total("postgres.revisions") == len(revs)  # de-duplicated in front of the handler
    assert metrics.total("postgres.late_revisions") > 0  # reordered: ctx.late revisions went to history
    handler.close()


def test_redelivering_everything_changes_no_row(bank: Simulation, postgres_dsn: str, schema: str) -> None:
    migrate_through_pipeline(bank, postgres_dsn, schema).close()
    before = snapshot(postgres_dsn, schema)
    migrate_through_pipeline(bank, postgres_dsn, schema).close()  # a fresh dedupe store: all again
    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
    deliver(handler, revisions_of(bank), size=50)  # and straight to the handler, one more time
    handler.close()
    assert snapshot(postgres_dsn, schema) == before  # xmin included: no row was even rewritten


@pytest.mark.parametrize("order", ["newest-first", "shuffled"])
def test_an_older_version_never_overwrites_a_newer_one(
    bank: Simulation, postgres_dsn: str, schema: str, order: str
) -> None:
    records = revisions_of(bank)
    if order == "newest-first":
        records.sort(key=lambda r: (-r.version, r.document_id))
    else:
        random.Random(5).shuffle(records)
    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
    handler.setup(SetupContext({}, logging.getLogger("test"), InMemoryMetrics()))
    deliver(handler, records)
    check_migration(bank, postgres_dsn, schema)
    before = snapshot(postgres_dsn, schema)
    deliver(handler, sorted(records, key=lambda r: r.version))  # the old ones again, late
    handler.close()
    assert snapshot(postgres_dsn, schema) == before


def test_pg_verify_passes_the_migration_and_names_a_tampered_row(
    bank: Simulation, postgres_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate_through_pipeline(bank, postgres_dsn, schema).close()
    assert main(["pg-verify", "--dsn", postgres_dsn, "--schema", schema]) == 0
    out = capsys.readouterr().out
    total = sum(len(v) for v in snapshot(postgres_dsn, schema).values())
    assert f"{total} rows in 6 tables, 0 mismatches" in out

    names = table_names(schema, "", "Transactions")
    with psycopg.connect(postgres_dsn) as conn:
        victim = conn.execute(
            sql.SQL(
                "SELECT document_id, version, revision_hash FROM {} WHERE status = 'live' "
                "ORDER BY document_id, version LIMIT 1"
            ).format(names.history_id())
        ).fetchone()
        assert victim is not None
        doc, version, stored = victim
        tampered = '{"$ion": "decimal", "v": "1.00"}'
        conn.execute(
            sql.SQL(
                "UPDATE {} SET data = jsonb_set(data, '{{amount}}', %s::jsonb) "
                "WHERE document_id = %s AND version = %s"
            ).format(names.history_id()),
            (tampered, doc, version),
        )
    assert main(["pg-verify", "--dsn", postgres_dsn, "--schema", schema]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MISMATCH")]
    assert len(lines) == 1
    expected = f"MISMATCH {names.history} document_id={doc} version={version} stored={bytes(stored).hex()} "
    assert lines[0].startswith(expected + "recomputed=")
    with psycopg.connect(postgres_dsn) as conn:
        report = verify_tables(conn, schema)
    assert [(m.table, m.document_id, m.version) for m in report.mismatches] == [(names.history, doc, version)]
    assert report.mismatches[0].actual not in (None, bytes(stored))


def test_pg_verify_bad_input_exits_2(postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pg-verify", "--dsn", postgres_dsn, "--schema", "no_such_schema"]) == 2
    assert "holds no migration" in capsys.readouterr().err
    assert main(["pg-verify", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"]) == 2
    assert "cannot reach PostgreSQL" in capsys.readouterr().err


def test_the_handler_loads_from_its_entry_point_with_settings(postgres_dsn: str, schema: str) -> None:
    handler = load_handler("postgres", {"dsn": postgres_dsn, "schema": schema, "tables": "Accounts"})
    assert isinstance(handler, PostgresHandler) and handler.name == "postgres"
    assert handler.options.tables == frozenset({"Accounts"}) and handler.options.schema == schema
    with pytest.raises(ConfigurationError, match="unknown settings"):
        load_handler("postgres", {"dsn": postgres_dsn, "shema": "x"})
    with pytest.raises(ConfigurationError, match="set dsn"):
        load_handler("postgres", {"schema": "x"})


def test_a_redaction_after_the_migration_removes_the_data_and_still_verifies(
    postgres_dsn: str, schema: str
) -> None:
    before_redaction = simulation(80, seed=4, deletes=2, redactions=0)
    newest: dict[str, int] = {}
    for rev in before_redaction.ledger.revisions:
        newest[rev.document_id] = max(newest.get(rev.document_id, -1), rev.version)
    superseded = [  # QLDB redacts only superseded revisions with data
        r for r in before_redaction.ledger.revisions if r.op != "delete" and r.version < newest[r.document_id]
    ]
    target = superseded[len(superseded) // 2]
    redacted = simulation(80, seed=4, deletes=2, redactions=0, redact=((target.document_id, target.version),))
    assert [r.redacted for r in redacted.ledger.revisions].count(True) == 1

    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
    deliver(handler, revisions_of(before_redaction))
    check_migration(before_redaction, postgres_dsn, schema)
    before = snapshot(postgres_dsn, schema)
    deliver(handler, revisions_of(redacted))  # the stream read again after redact_revision
    check_migration(redacted, postgres_dsn, schema)
    after = snapshot(postgres_dsn, schema)
    changed = {k: [r for r in after[k] if r not in before[k]] for k in after}
    history = f"{target.table}.history"
    assert {k: len(v) for k, v in changed.items() if v} == {history: 1}
    (row,) = changed[history]
    assert row[1:3] == (target.document_id, target.version)  # (after xmin)

    deliver(handler, revisions_of(before_redaction))  # the live form again: a redaction is one-way
    handler.close()
    assert snapshot(postgres_dsn, schema) == after
    with psycopg.connect(postgres_dsn) as conn:
        assert verify_tables(conn, schema).ok


def test_two_workers_migrating_at_once_give_the_same_tables(
    bank: Simulation, postgres_dsn: str, schema: str
) -> None:
    """Shards on two workers: both create the tables at once (the DDL lock) and write the same
    documents concurrently; the result is the ledger's."""
    import threading

    records = revisions_of(bank)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        mine = list(records)
        random.Random(seed).shuffle(mine)
        handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
        try:
            deliver(handler, mine, size=25)
        except BaseException as exc:
            errors.append(exc)
        finally:
            handler.close()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    check_migration(bank, postgres_dsn, schema)


def test_pg_verify_names_current_state_that_disagrees_with_history(
    bank: Simulation, postgres_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate_through_pipeline(bank, postgres_dsn, schema).close()
    names = table_names(schema, "", "Accounts")
    with psycopg.connect(postgres_dsn) as conn:
        doc, version = conn.execute(
            sql.SQL(
                "SELECT document_id, version FROM {} WHERE version > 0 ORDER BY document_id LIMIT 1"
            ).format(names.current_id())
        ).fetchone() or ("", 0)
        # the newest history row goes missing: current state no longer stands for history
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE document_id = %s AND version = %s").format(names.history_id()),
            (doc, version),
        )
    assert main(["pg-verify", "--dsn", postgres_dsn, "--schema", schema, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(m["table"], m["document_id"], m["version"], m["reason"]) for m in report["mismatches"]] == [
        (names.current, doc, version, "no history row for the current version")
    ]


def test_unmappable_data_names_its_record_and_the_ones_before_it_are_written(
    bank: Simulation, postgres_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qldbstream_handlers.postgres.handler as module
    from qldbstream_handlers.postgres import MappingError

    from qldbstream.api import BatchItemError

    records = sorted(revisions_of(bank), key=lambda r: (r.document_id, r.version))[:5]
    real = module.row_of

    def row_of(r: RevisionDetails) -> Any:
        if r is records[3]:
            raise MappingError("a symbol with unknown text")
        return real(r)

    monkeypatch.setattr(module, "row_of", row_of)
    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
    with pytest.raises(BatchItemError) as failed:
        handler.handle_batch(records, HandlerContext(handler.name, "shard-1"))
    assert failed.value.index == 3 and isinstance(failed.value.cause, MappingError)
    assert MappingError in handler.poison_errors
    handler.close()
    written = {
        (r["document_id"], r["version"])
        for t in {r.table_name for r in records}
        for r in rows(postgres_dsn, schema, t, "history")
    }
    assert written == {(r.document_id, r.version) for r in records[:3]}


def test_a_lost_connection_is_retryable_and_the_next_attempt_reconnects(
    bank: Simulation, postgres_dsn: str, schema: str
) -> None:
    records = revisions_of(bank)
    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema))
    ctx = HandlerContext(handler.name, "shard-1")
    handler.handle_batch(records[:10], ctx)
    assert handler._conn is not None
    pid = handler._conn.info.backend_pid
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(handler.retryable_errors):
        handler.handle_batch(records[10:], ctx)
    handler.handle_batch(records[10:], ctx)  # the pipeline's retry: a new connection, all of it
    handler.close()
    check_migration(bank, postgres_dsn, schema)


def test_missing_tables_without_create_halt_the_shard(
    bank: Simulation, postgres_dsn: str, schema: str
) -> None:
    from qldbstream.api import HaltShardError

    handler = PostgresHandler(options=PostgresOptions(dsn=postgres_dsn, schema=schema, create=False))
    with pytest.raises(HaltShardError, match="create=false"):
        handler.handle_batch(revisions_of(bank)[:3], HandlerContext(handler.name, "shard-1"))
    handler.close()
