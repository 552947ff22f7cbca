"""The PostgreSQL migration handler: QLDB revisions -> a history and a current-state table per table.

Lifecycle (see :mod:`qldbstream.api.handler`):

* ``setup`` - connect (psycopg 3); each new connection creates the schema and the registry table
  when absent (``create=true``);
* ``wants`` - revisions of the chosen tables (every table by default);
* ``handle_batch`` - map every revision to its row first (data the mapping cannot carry names
  its record in a :class:`BatchItemError`: dead-lettered, the records before it still written),
  then write them in **one transaction**: the tables of a QLDB table met for the first time are
  created and registered, history rows inserted once, current rows upserted version-gated
  (:mod:`.schema`). A redelivery, a replay or a late revision (``ctx.late``) changes nothing it
  should not: an older version lands in history and never overwrites current state.
* ``flush`` - nothing: each batch committed before ``handle_batch`` returned;
* ``close`` - close the connection.

Connection and server errors are retryable (the batch is retried, then the shard halts at the
record): the transaction rolled back, so nothing was half-written. Missing tables with
``create=false`` halt the shard at once (every record would fail alike).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the postgres handler needs psycopg 3: pip install 'qldbstream-handlers[postgres]'"
    ) from exc

from qldbstream.api import (
    BatchItemError,
    ConfigurationError,
    HaltShardError,
    Handler,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    RevisionDetails,
    SetupContext,
)
from qldbstream_handlers.postgres.mapping import MappingError
from qldbstream_handlers.postgres.options import PostgresOptions
from qldbstream_handlers.postgres.rows import Row, row_of
from qldbstream_handlers.postgres.schema import (
    TableNames,
    create_registry,
    create_tables,
    current_upsert,
    ddl_lock,
    history_upsert,
    register_table,
    table_names,
)

__all__ = ["PostgresHandler"]

log = logging.getLogger("qldbstream.handler.postgres")


class PostgresHandler(Handler):
    """Migrates verified revisions to PostgreSQL (docs/handlers/postgres.md)."""

    name = "postgres"
    retryable_errors = (psycopg.OperationalError, psycopg.errors.SerializationFailure)
    poison_errors = (MappingError,)

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        options: PostgresOptions | None = None,
        connect: Callable[[str], psycopg.Connection[Any]] | None = None,
    ) -> None:
        if settings:
            if options is not None:
                raise ConfigurationError("postgres: give settings or options, not both")
            options = PostgresOptions.from_settings(settings)
        if options is None:
            raise ConfigurationError("postgres: set dsn (a libpq connection string or URI)")
        self.options = options
        self._connect = connect or psycopg.connect
        self._conn: psycopg.Connection[Any] | None = None
        #: QLDB tables whose PostgreSQL tables exist (created or found) on this connection
        self._ready: dict[str, TableNames] = {}
        self.metrics: Metrics = NullMetrics()

    # --- lifecycle -----------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self.metrics = ctx.metrics
        self._connection()  # fail at start-up, not at the first batch, when the server is unreachable

    def wants(self, record: JournalRecord) -> bool:
        if not isinstance(record, RevisionDetails):
            return False
        return self.options.tables is None or record.table_name in self.options.tables

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        rows: list[tuple[RevisionDetails, Row]] = []
        failed: BatchItemError | None = None
        for index, record in enumerate(records):
            if not isinstance(record, RevisionDetails):
                continue
            try:
                rows.append((record, row_of(record)))
            except MappingError as exc:
                failed = BatchItemError(index, exc)
                break
        if rows:
            self._write(rows)
        late = sum(1 for i in ctx.late_indexes if i < len(records))
        self.metrics.incr("postgres.revisions", len(rows))
        if late:
            self.metrics.incr("postgres.late_revisions", late)
        if failed is not None:
            raise failed

    def shard_released(self, shard_id: str) -> None:
        """Nothing is held per shard: every batch committed in ``handle_batch``."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._ready.clear()

    # --- writing -------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self._connect(self.options.dsn)
            self._ready.clear()
            if self.options.create:  # the schema and the registry, on every new connection (idempotent)
                with conn.transaction():
                    conn.execute(*ddl_lock(self.options.schema))
                    conn.execute(create_registry(self.options.schema, self.options.table_prefix))
            self._conn = conn
        return self._conn

    def _write(self, rows: list[tuple[RevisionDetails, Row]]) -> None:
        conn = self._connection()
        by_table: dict[str, list[Row]] = {}
        ids: dict[str, str] = {}
        for record, row in rows:
            by_table.setdefault(record.table_name, []).append(row)
            ids[record.table_name] = record.table_id
        try:
            with conn.transaction(), conn.cursor() as cur:
                for table, table_rows in sorted(by_table.items()):
                    # one lock order for every writer (tables, then keys): concurrent batches of
                    # other shards or workers wait for each other instead of deadlocking
                    table_rows.sort(key=lambda row: (row[0], row[1]))
                    names = self._tables(cur, table, ids[table])
                    cur.executemany(history_upsert(names), table_rows)
                    cur.executemany(current_upsert(names), table_rows)
        except psycopg.OperationalError:
            self.close()  # a broken connection: the retry opens a new one
            raise
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            self._ready.clear()
            raise HaltShardError(
                f"postgres: {str(exc).splitlines()[0]} and create=false: create the tables "
                "(docs/handlers/postgres.md, 'Tables') or set create=true; the shard waits at this record"
            ) from exc
        except psycopg.Error:
            self._ready.clear()  # the transaction rolled back: DDL of this batch may be gone
            raise

    def _tables(self, cur: psycopg.Cursor[Any], table: str, table_id: str) -> TableNames:
        names = self._ready.get(table)
        if names is not None:
            return names
        o = self.options
        names = table_names(o.schema, o.table_prefix, table)
        if o.create:
            cur.execute(*ddl_lock(o.schema))
            cur.execute(create_tables(names))
            cur.execute(
                register_table(o.schema, o.table_prefix), (table, table_id, names.current, names.history)
            )
        self._ready[table] = names
        return names
