"""Re-verify migrated rows: recompute each revision's hash from its columns, compare it to the stored
``revision_hash`` (the hash QLDB committed, checked by the pipeline before the row was written).

A mismatch means the row changed after the migration (its data, metadata columns or the hash
itself), or a value the migration wrote cannot stand for what QLDB hashed (masked data: see
docs/handlers/postgres.md). Every row of every registered table's history and current state is
checked; each mismatch names the table, the document and version, the stored and the recomputed
hash. Then current state must agree with history: each current row is its document's newest
history row (same version and hash), and each document in history has a current row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from qldbstream_handlers.postgres.mapping import MappingError
from qldbstream_handlers.postgres.rows import revision_hash
from qldbstream_handlers.postgres.schema import registry_name

__all__ = ["Mismatch", "VerifyReport", "verify_tables"]

_SELECT = (
    "document_id",
    "version",
    "tx_time_ion",
    "tx_id",
    "status",
    "data",
    "data_hash",
    "revision_hash",
)


@dataclass(frozen=True)
class Mismatch:
    """A row whose recomputed hash is not the stored one (``actual`` ``None``: not computable)."""

    table: str
    document_id: str
    version: int
    expected: bytes
    actual: bytes | None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "document_id": self.document_id,
            "version": self.version,
            "expected": self.expected.hex(),
            "actual": None if self.actual is None else self.actual.hex(),
            "reason": self.reason,
        }


@dataclass
class VerifyReport:
    checked: int = 0
    #: PostgreSQL table name -> rows checked
    tables: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _registered(conn: psycopg.Connection[Any], schema: str, prefix: str) -> list[tuple[str, str, str]]:
    query = sql.SQL("SELECT table_name, current_table, history_table FROM {} ORDER BY table_name").format(
        sql.Identifier(schema, registry_name(prefix))
    )
    return [(str(a), str(b), str(c)) for a, b, c in conn.execute(query).fetchall()]


def _rows(conn: psycopg.Connection[Any], schema: str, table: str) -> Iterator[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} ORDER BY document_id, version").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in _SELECT), sql.Identifier(schema, table)
    )
    with conn.cursor(name="pg_verify") as cur:  # server-side: any size
        cur.itersize = 2000
        cur.execute(query)
        yield from cur


#: Current rows that do not stand for their document's newest history row, and documents in
#: history without a current row: (document_id, version, current hash, history hash, reason).
_AGREEMENT = """
SELECT c.document_id, c.version, c.revision_hash, h.revision_hash,
       CASE WHEN h.document_id IS NULL THEN 'no history row for the current version'
            WHEN h.revision_hash <> c.revision_hash THEN 'history holds another hash for this version'
            ELSE 'history holds a newer version' END
FROM {current} c LEFT JOIN {history} h ON h.document_id = c.document_id AND h.version = c.version
WHERE h.document_id IS NULL OR h.revision_hash <> c.revision_hash
   OR c.version < (SELECT max(n.version) FROM {history} n WHERE n.document_id = c.document_id)
UNION ALL
SELECT n.document_id, max(n.version), NULL, NULL, 'in history, no current row'
FROM {history} n WHERE NOT EXISTS (SELECT 1 FROM {current} c WHERE c.document_id = n.document_id)
GROUP BY n.document_id
ORDER BY 1, 2
"""


def _disagreements(conn: psycopg.Connection[Any], schema: str, current: str, history: str) -> list[Mismatch]:
    query = sql.SQL(_AGREEMENT).format(
        current=sql.Identifier(schema, current), history=sql.Identifier(schema, history)
    )
    return [
        Mismatch(current, doc, version, bytes(ours or b""), None if theirs is None else bytes(theirs), why)
        for doc, version, ours, theirs, why in conn.execute(query).fetchall()
    ]


def verify_tables(
    conn: psycopg.Connection[Any], schema: str, prefix: str = "", tables: frozenset[str] | None = None
) -> VerifyReport:
    """Check every history and current row of the registered QLDB tables (or of ``tables``).

    Raises :class:`psycopg.errors.UndefinedTable` when the schema holds no migration.
    """
    report = VerifyReport()
    with conn.transaction():
        for qldb_table, current, history in _registered(conn, schema, prefix):
            if tables is not None and qldb_table not in tables:
                continue
            for pg_table in (history, current):
                n = 0
                for doc, version, tx_time_ion, tx_id, status, data, data_hash, stored in _rows(
                    conn, schema, pg_table
                ):
                    n += 1
                    expected = bytes(stored)
                    try:
                        actual = revision_hash(doc, version, tx_time_ion, tx_id, status, data, data_hash)
                    except (MappingError, ValueError) as exc:
                        report.mismatches.append(Mismatch(pg_table, doc, version, expected, None, str(exc)))
                        continue
                    if actual != expected:
                        report.mismatches.append(Mismatch(pg_table, doc, version, expected, actual))
                report.tables[pg_table] = n
                report.checked += n
            report.mismatches.extend(_disagreements(conn, schema, current, history))
    return report
