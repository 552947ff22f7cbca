"""PostgreSQL migration sink: each QLDB table becomes a history and a current-state table.

QLDB reached end of support; this handler moves a ledger's verified revisions into PostgreSQL
(Aurora PostgreSQL included) with the Ion values exact (:mod:`.mapping`), writes that are
version-gated and idempotent (:mod:`.schema`), and keeps what is needed to re-verify the migrated
history against the hashes QLDB committed (``qldbstream pg-verify``, :mod:`.command`).
Needs the ``postgres`` extra (psycopg 3). docs/handlers/postgres.md has the details.
"""

from qldbstream_handlers.postgres.handler import PostgresHandler
from qldbstream_handlers.postgres.mapping import MappingError, from_jsonb, to_jsonb
from qldbstream_handlers.postgres.options import PostgresOptions
from qldbstream_handlers.postgres.schema import COLUMNS, TableNames, table_names
from qldbstream_handlers.postgres.verify import Mismatch, VerifyReport, verify_tables

__all__ = [
    "COLUMNS",
    "MappingError",
    "Mismatch",
    "PostgresHandler",
    "PostgresOptions",
    "TableNames",
    "VerifyReport",
    "from_jsonb",
    "table_names",
    "to_jsonb",
    "verify_tables",
]
