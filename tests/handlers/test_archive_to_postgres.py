"""An export of a simulated ledger, verified, tampered and replayed into PostgreSQL - end to end,
through the commands a user runs (each one a ``qldbstream`` subprocess):

1. ``qldbstream simulate --export DIR --export-format ION_BINARY --ledger L --expected E``;
2. ``qldbstream verify DIR`` - exit 0 for the export QLDB wrote, 1 naming the check for a forgery;
3. ``qldbstream run --source export:DIR --checkpoint-file F`` with ``QLDBSTREAM_HANDLERS=postgres``
   and a directory DLQ, then ``qldbstream pg-verify``.

The expected tables are computed here from the simulator's ground truth (``--ledger``) and its
verdicts (``--expected``), not from anything the pipeline or the handler wrote: history holds every
revision of every block the pipeline may deliver, current state each document's newest of those.
Forgeries (docs/delivery.md): ``+rehash`` (V4 fails) is dead-lettered under the default
``delivery = verified``; ``+rehash-block`` (only V9 of the next block fails) is withheld under
``delivery = chain-confirmed``, together with the export's last block, which no successor confirms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from amazon.ion import simpleion
from amazon.ion.equivalence import ion_equals
from psycopg import sql
from qldbstream_handlers.postgres import from_jsonb, table_names

SEED = "5"
TRANSACTIONS = "300"
TAMPERED_TABLE_ROW = "Transactions#40"
TIMEOUT = 300.0


def qldbstream() -> list[str]:
    """The ``qldbstream`` console script of this interpreter's environment (else ``-m``)."""
    script = shutil.which("qldbstream", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "qldbstream"]


def cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``qldbstream ARGS`` with only the given ``QLDBSTREAM_*`` settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QLDBSTREAM_")}
    environ.update(env or {})
    return subprocess.run(
        [*qldbstream(), *args],
        check=False,
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ok(result: subprocess.CompletedProcess[str], status: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == status, (result.args, result.returncode, result.stdout, result.stderr)
    return result


@dataclass(frozen=True)
class Export:
    """One ``simulate --export`` run: the export, the ledger's ground truth, the expected verdicts."""

    directory: Path
    ledger: dict[str, Any]
    expected: dict[str, Any]

    @property
    def revisions(self) -> list[dict[str, Any]]:
        return list(self.ledger["revisions"])

    def blocks(self, sequence_nos: set[int]) -> list[dict[str, Any]]:
        return [r for r in self.revisions if r["sequenceNo"] in sequence_nos]


def simulate(root: Path, name: str, *tamper: str) -> Export:
    args = ["--seed", SEED, "--transactions", TRANSACTIONS, "--delete", "12", "--redact", "2"]
    for spec in tamper:
        args += ["--tamper", spec]
    ok(
        cli(
            "simulate",
            *args,
            "--export",
            name,
            "--export-format",
            "ION_BINARY",
            "--ledger",
            f"{name}.ledger.json",
            "--expected",
            f"{name}.expected.json",
            cwd=root,
        )
    )
    return Export(
        root / name,
        json.loads((root / f"{name}.ledger.json").read_text()),
        json.loads((root / f"{name}.expected.json").read_text()),
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Export]:
    """The same ledger (same seed) exported as QLDB wrote it and with two forgeries of one amount."""
    root = tmp_path_factory.mktemp("exports")
    return {
        "genuine": simulate(root, "genuine"),
        "rehash": simulate(root, "rehash", f"{TAMPERED_TABLE_ROW}+rehash:data.amount"),
        "rehash-block": simulate(root, "rehash-block", f"{TAMPERED_TABLE_ROW}+rehash-block:data.amount"),
    }


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    name = f"x_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def migrate(
    export: Export, dsn: str, schema: str, work: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``qldbstream run --source export:DIR`` into ``schema``, dead letters in ``work/dlq``."""
    env = {
        "QLDBSTREAM_HANDLERS": "postgres",
        "QLDBSTREAM_HANDLER_POSTGRES__DSN": dsn,
        "QLDBSTREAM_HANDLER_POSTGRES__SCHEMA": schema,
        "QLDBSTREAM_DLQ": f"dir:{work / 'dlq'}",
        **{f"QLDBSTREAM_{k.upper()}": v for k, v in settings.items()},
    }
    return cli(
        "run",
        "--source",
        f"export:{export.directory}",
        "--checkpoint-file",
        str(work / "checkpoints.json"),
        "--no-progress",
        env=env,
        cwd=work,
    )


def end_line(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counts of ``qldbstream run``'s end line (on stderr): records read, deliveries, ..."""
    match = re.search(
        r"qldbstream run: finished; (\d+) records read, .*; (\d+) deliveries, (\d+) duplicates skipped, "
        r"(\d+) late, (\d+) dead-lettered",
        result.stderr,
    )
    assert match, result.stderr
    return dict(
        zip(
            ("read", "deliveries", "duplicates", "late", "dead-lettered"),
            map(int, match.groups()),
            strict=True,
        )
    )


def pg_verify(dsn: str, schema: str, rows: int, cwd: Path) -> None:
    result = ok(cli("pg-verify", "--dsn", dsn, "--schema", schema, cwd=cwd))
    assert f"{rows} rows in 6 tables, 0 mismatches" in result.stdout


def table_rows(dsn: str, schema: str, table: str, kind: str) -> list[dict[str, Any]]:
    names = table_names(schema, "", table)
    ident = names.history_id() if kind == "history" else names.current_id()
    query = sql.SQL("SELECT xmin::text AS xmin, * FROM {} ORDER BY document_id, version").format(ident)
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(query).fetchall()


def snapshot(export: Export, dsn: str, schema: str) -> dict[str, list[dict[str, Any]]]:
    return {
        f"{table}.{kind}": table_rows(dsn, schema, table, kind)
        for table in export.ledger["tableIds"]
        for kind in ("history", "current")
    }


def check_row(row: Mapping[str, Any], rev: Mapping[str, Any], table_id: str) -> None:
    """One PostgreSQL row against one revision of the simulator's ledger."""
    status = "deleted" if rev["op"] == "delete" else "redacted" if rev["redacted"] else "live"
    assert (row["document_id"], row["version"], row["table_id"]) == (
        rev["documentId"],
        rev["version"],
        table_id,
    )
    assert (row["tx_id"], row["block_sequence_no"]) == (rev["txId"], rev["sequenceNo"])
    assert bytes(row["revision_hash"]).hex() == rev["hash"]
    assert (row["status"], row["deleted"]) == (status, status == "deleted")
    if status == "live":
        assert ion_equals(from_jsonb(row["data"]), simpleion.loads(rev["data"]))
    else:
        assert row["data"] is None


def check_tables(export: Export, dsn: str, schema: str, revisions: list[dict[str, Any]]) -> int:
    """History is exactly ``revisions``; current state each document's newest of them (a deleted
    document as a tombstone), and its live rows hold the ledger's latest data. Returns the rows."""
    total = 0
    for table, table_id in export.ledger["tableIds"].items():
        revs = [r for r in revisions if r["table"] == table]
        assert revs, f"the simulated ledger has no {table} revision to migrate"
        by_key = {(r["documentId"], r["version"]): r for r in revs}
        history = table_rows(dsn, schema, table, "history")
        assert [(r["document_id"], r["version"]) for r in history] == sorted(by_key)
        for row in history:
            check_row(row, by_key[(row["document_id"], row["version"])], table_id)
        newest: dict[str, dict[str, Any]] = {}
        for rev in revs:
            if rev["documentId"] not in newest or rev["version"] > newest[rev["documentId"]]["version"]:
                newest[rev["documentId"]] = rev
        current = table_rows(dsn, schema, table, "current")
        assert [r["document_id"] for r in current] == sorted(newest)
        for row in current:
            check_row(row, newest[row["document_id"]], table_id)
        live = {
            doc: simpleion.loads(rev["data"])
            for doc, rev in newest.items()
            if rev["op"] != "delete" and not rev["redacted"]
        }
        migrated = {r["document_id"]: from_jsonb(r["data"]) for r in current if r["status"] == "live"}
        assert sorted(migrated) == sorted(live)
        assert all(ion_equals(migrated[doc], live[doc]) for doc in live)
        total += len(history) + len(current)
    return total


def dead_letters(work: Path) -> dict[tuple[int, str | None, int | None], set[str]]:
    """The directory DLQ: (block, document id, version) -> the checks that stopped the record."""
    out: dict[tuple[int, str | None, int | None], set[str]] = {}
    for path in sorted((work / "dlq").glob("*.json")):
        letter = json.loads(path.read_text())
        key = (letter["block_sequence_no"], letter["document_id"], letter["version"])
        assert key not in out, f"{key} dead-lettered twice"
        out[key] = {f["check"] for f in letter["verification_failures"]}
    return out


def forged(export: Export) -> tuple[str, int, int]:
    """The tampered revision (document id, version) and its block, as the simulator reports it."""
    (tamper,) = export.expected["tampers"]
    match = re.fullmatch(r"REVISION_DETAILS (\S+) version (\d+) \(block (\d+)\)", tamper["record"])
    assert match, tamper["record"]
    return match[1], int(match[2]), int(match[3])


def verify_failures(export: Export, cwd: Path) -> list[dict[str, Any]]:
    """``qldbstream verify --json DIR``: exit 1, the failures it names."""
    report = json.loads(ok(cli("verify", "--json", str(export.directory), cwd=cwd), 1).stdout)
    assert report["ok"] is False
    failures: list[dict[str, Any]] = report["failures"]
    return failures


def test_a_genuine_export_migrates_to_the_ledger(
    exports: dict[str, Export], postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    export = exports["genuine"]
    revs = export.revisions
    assert {r["op"] for r in revs} == {"insert", "update", "delete"} and any(r["redacted"] for r in revs)
    assert not export.expected["failures"]
    result = ok(cli("verify", str(export.directory), "--no-progress", cwd=tmp_path))
    assert "ALL VERIFIED" in result.stdout

    result = ok(migrate(export, postgres_dsn, schema, tmp_path))
    assert end_line(result) == {
        "read": len(revs) + export.expected["stream"]["blocks"],
        "deliveries": len(revs),
        "duplicates": 0,
        "late": 0,
        "dead-lettered": 0,
    }
    assert not dead_letters(tmp_path)
    rows = check_tables(export, postgres_dsn, schema, revs)
    pg_verify(postgres_dsn, schema, rows, tmp_path)

    before = snapshot(export, postgres_dsn, schema)
    result = ok(migrate(export, postgres_dsn, schema, tmp_path))  # a finished replay reads nothing
    assert end_line(result)["read"] == end_line(result)["deliveries"] == 0
    assert snapshot(export, postgres_dsn, schema) == before  # xmin included: no row rewritten


def test_a_forged_revision_with_its_hash_recomputed_is_dead_lettered_with_its_block(
    exports: dict[str, Export], postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    """``+rehash``: the revision and its summary entry agree, the block's Merkle root (V4) does
    not - the block vouches for none of its revisions, under the default delivery."""
    export = exports["rehash"]
    document_id, version, block = forged(export)
    assert [(f["check"], f["sequenceNo"]) for f in export.expected["failures"]] == [("V4", block)]
    assert [(f["check"], f["blockSequenceNo"]) for f in verify_failures(export, tmp_path)] == [("V4", block)]

    ok(migrate(export, postgres_dsn, schema, tmp_path))
    withheld = export.blocks({block})
    assert (document_id, version) in {(r["documentId"], r["version"]) for r in withheld}
    letters = dead_letters(tmp_path)
    revision_letters = {k for k in letters if k[1] is not None}
    assert revision_letters == {(block, r["documentId"], r["version"]) for r in withheld}
    assert all(letters[k] == {"V4"} for k in revision_letters)
    rows = check_tables(export, postgres_dsn, schema, [r for r in export.revisions if r not in withheld])
    pg_verify(postgres_dsn, schema, rows, tmp_path)


def test_a_forged_block_with_its_hash_recomputed_is_withheld_under_chain_confirmed(
    exports: dict[str, Export], postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    """``+rehash-block``: the forged block holds together (V2-V8 pass); only the next block's
    link (V9) breaks. ``chain-confirmed`` withholds the forged block, and the last block (no
    successor confirms it); everything else is migrated."""
    export = exports["rehash-block"]
    document_id, version, block = forged(export)
    last = export.expected["stream"]["lastSequenceNo"]
    assert block != last
    links = [(f["check"], f["previousSequenceNo"], f["sequenceNo"]) for f in export.expected["failures"]]
    assert links == [("V9", block, block + 1)]
    failures = verify_failures(export, tmp_path)
    assert [(f["check"], f["blockSequenceNo"]) for f in failures] == [("V9", block + 1)]
    assert f"block {block + 1} does not equal blockHash of block {block}" in failures[0]["message"]

    result = ok(migrate(export, postgres_dsn, schema, tmp_path, delivery="chain-confirmed"))
    withheld = export.blocks({block, last})
    counts = end_line(result)
    assert counts["deliveries"] == len(export.revisions) - len(withheld)
    assert counts["dead-lettered"] == len(withheld) + 2  # and the two block summaries
    letters = dead_letters(tmp_path)
    assert {k[0] for k in letters} == {block, last}
    assert {k for k in letters if k[1] is not None} == {
        (r["sequenceNo"], r["documentId"], r["version"]) for r in withheld
    }
    assert (block, document_id, version) in letters
    assert all(checks == {"V9"} for checks in letters.values())
    rows = check_tables(export, postgres_dsn, schema, [r for r in export.revisions if r not in withheld])
    pg_verify(postgres_dsn, schema, rows, tmp_path)


def test_under_the_default_delivery_a_forged_block_hash_is_migrated(
    exports: dict[str, Export], postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    """docs/delivery.md: ``verified`` delivers a re-hashed block (its broken link is reported),
    and ``pg-verify`` cannot tell: the rows agree with the hashes the export holds. Hence
    ``chain-confirmed`` for a migration (docs/handlers/postgres.md, "Migrating an export")."""
    export = exports["rehash-block"]
    document_id, version, block = forged(export)
    (tamper,) = export.expected["tampers"]
    result = ok(migrate(export, postgres_dsn, schema, tmp_path))
    assert end_line(result)["deliveries"] == len(export.revisions) and not dead_letters(tmp_path)
    assert f"chain break: previousBlockHash of block {block + 1}" in result.stderr
    (row,) = [
        r
        for r in table_rows(postgres_dsn, schema, "Transactions", "history")
        if (r["document_id"], r["version"]) == (document_id, version)
    ]
    assert from_jsonb(row["data"])["amount"] == simpleion.loads(tamper["after"])  # the forged value
    (genuine,) = [
        r for r in export.blocks({block}) if (r["documentId"], r["version"]) == (document_id, version)
    ]
    assert bytes(row["revision_hash"]).hex() != genuine["hash"]  # the forger's recomputed hash
    rows = sum(len(v) for v in snapshot(export, postgres_dsn, schema).values())
    pg_verify(postgres_dsn, schema, rows, tmp_path)
