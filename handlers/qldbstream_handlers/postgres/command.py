"""``qldbstream pg-verify``: re-verify a PostgreSQL migration against the hashes QLDB committed.

For every row of every migrated table (history and current state), rebuild the revision's Ion
from its columns (``data`` through the reverse mapping, ``metadata`` from ``document_id``,
``version``, ``tx_time_ion`` and ``tx_id``), recompute QLDB's revision hash and compare it with
the stored ``revision_hash`` (:mod:`.verify`). A sub-command of ``qldbstream`` contributed by this
distribution (entry-point group ``qldbstream.commands``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from qldbstream.api import ConfigurationError

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  qldbstream pg-verify --dsn postgresql://migrator@db.example.com/ledger
  QLDBSTREAM_PG_DSN='host=127.0.0.1 dbname=ledger' qldbstream pg-verify --schema qldb --json

exit status: 0 every row verified, 1 mismatches (each printed: table, document, version, stored
and recomputed hash, or why current state disagrees with history), 2 bad options, an unreachable
server or a schema that holds no migration.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pg-verify",
        help="re-verify a PostgreSQL migration (the postgres handler's tables) against QLDB's hashes",
        description="Recompute every migrated revision's QLDB hash from its PostgreSQL row and compare "
        "it with the stored revision_hash.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dsn", metavar="DSN", help="libpq connection string or URI (default: $QLDBSTREAM_PG_DSN)"
    )
    p.add_argument("--schema", default="qldb", help="the migration's schema (default: qldb)")
    p.add_argument("--prefix", default="", metavar="PREFIX", help="the migration's table prefix")
    p.add_argument("--tables", metavar="T1,T2", help="only these QLDB tables (default: all)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import psycopg

    from qldbstream_handlers.postgres.verify import verify_tables

    dsn = args.dsn or os.environ.get("QLDBSTREAM_PG_DSN")
    if not dsn:
        raise ConfigurationError("give --dsn or set QLDBSTREAM_PG_DSN")
    tables = frozenset(t.strip() for t in (args.tables or "").split(",") if t.strip()) or None
    try:
        with psycopg.connect(dsn) as conn:
            report = verify_tables(conn, args.schema, args.prefix, tables)
    except psycopg.errors.UndefinedTable:
        raise ConfigurationError(
            f"schema {args.schema!r} (prefix {args.prefix!r}) holds no migration: check --schema and --prefix"
        ) from None
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"cannot reach PostgreSQL: {first}") from None
    out = sys.stdout
    if args.json:
        doc = {
            "checked": report.checked,
            "tables": report.tables,
            "mismatches": [m.as_dict() for m in report.mismatches],
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        for m in report.mismatches:
            line = f"MISMATCH {m.table} document_id={m.document_id} version={m.version}"
            line += f" stored={m.expected.hex()}"
            if m.actual is not None:
                line += f" recomputed={m.actual.hex()}"
            out.write(line + (f" ({m.reason})" if m.reason else "") + "\n")
        out.write(
            f"{report.checked} rows in {len(report.tables)} tables, {len(report.mismatches)} mismatches\n"
        )
    return 0 if report.ok else 1
