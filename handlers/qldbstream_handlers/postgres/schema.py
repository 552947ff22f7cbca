"""The migrated tables: names, DDL and the version-gated, idempotent upserts.

Per QLDB table ``T`` (``<prefix>`` from the settings, in the configured schema):

* ``<prefix>T_history`` - every revision once, primary key ``(document_id, version)``;
* ``<prefix>T_current`` - each document's newest revision, primary key ``document_id``;
* ``<prefix>qldb_tables`` - the registry: QLDB table name and id -> its two PostgreSQL tables
  (what ``qldbstream pg-verify`` walks).

Both data tables have the same columns (docs/handlers/postgres.md, "Tables"). The writes:

* history: ``INSERT ... ON CONFLICT (document_id, version) DO UPDATE`` only to *redact* a live row
  whose hash is the redacted revision's (a redaction is one-way); otherwise nothing changes;
* current: ``INSERT ... ON CONFLICT (document_id) DO UPDATE ... WHERE current.version <
  EXCLUDED.version`` (or the same version being redacted): an older or equal version never
  overwrites a newer one, so redelivery, replay and out-of-order arrival change nothing.

Names longer than PostgreSQL's 63 bytes are shortened deterministically (a hash suffix); every name
goes through :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from psycopg import sql

from qldbstream_handlers.postgres.options import MAX_IDENTIFIER_BYTES

__all__ = [
    "COLUMNS",
    "TableNames",
    "create_registry",
    "create_tables",
    "current_upsert",
    "ddl_lock",
    "history_upsert",
    "register_table",
    "registry_name",
    "table_names",
]

#: The data columns of both tables, in insert order.
COLUMNS = (
    "document_id",
    "version",
    "table_id",
    "tx_id",
    "tx_time",
    "tx_time_ion",
    "block_strand_id",
    "block_sequence_no",
    "revision_hash",
    "status",
    "data",
    "data_hash",
)

_COLUMN_DDL = """
    document_id text NOT NULL,
    version bigint NOT NULL CHECK (version >= 0),
    table_id text NOT NULL,
    tx_id text NOT NULL,
    tx_time timestamptz NOT NULL,
    tx_time_ion text NOT NULL,
    block_strand_id text NOT NULL,
    block_sequence_no bigint NOT NULL,
    revision_hash bytea NOT NULL,
    status text NOT NULL CHECK (status IN ('live', 'deleted', 'redacted')),
    data jsonb,
    data_hash bytea,
    deleted boolean GENERATED ALWAYS AS (status = 'deleted') STORED,
    CHECK ((status = 'live') = (data IS NOT NULL)),
    CHECK ((status = 'redacted') = (data_hash IS NOT NULL))"""


def _name(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return text
    digest = hashlib.sha256(raw).hexdigest()[:10]
    head = raw[: MAX_IDENTIFIER_BYTES - 11].decode("utf-8", errors="ignore")
    return f"{head}_{digest}"


@dataclass(frozen=True)
class TableNames:
    schema: str
    current: str
    history: str

    def current_id(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.current)

    def history_id(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.history)


def table_names(schema: str, prefix: str, qldb_table: str) -> TableNames:
    """The PostgreSQL tables of one QLDB table (``<prefix><table>_current`` / ``_history``)."""
    safe = qldb_table.replace("\x00", "")
    return TableNames(schema, _name(f"{prefix}{safe}_current"), _name(f"{prefix}{safe}_history"))


def registry_name(prefix: str) -> str:
    return _name(f"{prefix}qldb_tables")


def ddl_lock(schema: str) -> tuple[sql.SQL, tuple[str]]:
    """A transaction-scoped advisory lock taken before DDL: workers creating the same tables at once
    would otherwise race inside ``CREATE ... IF NOT EXISTS`` (a unique violation in the catalog)."""
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s))"), (f"qldbstream.postgres:{schema}",)


def create_registry(schema: str, prefix: str) -> sql.Composed:
    return sql.SQL(
        "CREATE SCHEMA IF NOT EXISTS {schema}; "
        "CREATE TABLE IF NOT EXISTS {registry} ("
        "table_name text PRIMARY KEY, table_id text NOT NULL, "
        "current_table text NOT NULL, history_table text NOT NULL)"
    ).format(schema=sql.Identifier(schema), registry=sql.Identifier(schema, registry_name(prefix)))


def create_tables(names: TableNames) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {history} ({columns}, PRIMARY KEY (document_id, version)); "
        "CREATE TABLE IF NOT EXISTS {current} ({columns}, PRIMARY KEY (document_id))"
    ).format(history=names.history_id(), current=names.current_id(), columns=sql.SQL(_COLUMN_DDL))


def register_table(schema: str, prefix: str) -> sql.Composed:
    """Parameters: table_name, table_id, current_table, history_table."""
    return sql.SQL(
        "INSERT INTO {registry} (table_name, table_id, current_table, history_table) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (table_name) DO NOTHING"
    ).format(registry=sql.Identifier(schema, registry_name(prefix)))


def _insert(target: sql.Composable) -> sql.Composed:
    return sql.SQL("INSERT INTO {target} AS t ({columns}) VALUES ({values})").format(
        target=target,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS),
        values=sql.SQL(", ").join(sql.Placeholder() for _ in COLUMNS),
    )


_REDACTS = sql.SQL(
    "t.version = EXCLUDED.version AND t.status = 'live' AND EXCLUDED.status = 'redacted' "
    "AND t.revision_hash = EXCLUDED.revision_hash"
)


def history_upsert(names: TableNames) -> sql.Composed:
    """A revision into history: inserted once; a later redacted form of it removes the data."""
    return sql.SQL(
        "{insert} ON CONFLICT (document_id, version) DO UPDATE "
        "SET status = 'redacted', data = NULL, data_hash = EXCLUDED.data_hash WHERE {redacts}"
    ).format(insert=_insert(names.history_id()), redacts=_REDACTS)


def current_upsert(names: TableNames) -> sql.Composed:
    """A revision into current state: only over an older version (or to redact the same one)."""
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in COLUMNS if c != "document_id"
    )
    return sql.SQL(
        "{insert} ON CONFLICT (document_id) DO UPDATE SET {updates} "
        "WHERE t.version < EXCLUDED.version OR ({redacts})"
    ).format(insert=_insert(names.current_id()), updates=updates, redacts=_REDACTS)
