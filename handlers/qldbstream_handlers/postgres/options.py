"""The PostgreSQL migration's settings.

Settings (``QLDBSTREAM_HANDLER_POSTGRES__<KEY>`` or ``[handlers.postgres]``; all strings):

================  ======================================================  ==================
``dsn``           libpq connection string or URI (psycopg 3)              (required)
``schema``        PostgreSQL schema the tables live in (created if absent)  ``qldb``
``table_prefix``  prefix of every table name                              (none)
``tables``        comma-separated QLDB table names to migrate             every table
``create``        ``false``: never run DDL (the tables must exist)        ``true``
================  ======================================================  ==================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qldbstream.api import ConfigurationError

__all__ = ["PostgresOptions"]

_KEYS = frozenset({"dsn", "schema", "table_prefix", "tables", "create"})
#: PostgreSQL truncates longer identifiers silently; names are checked against it.
MAX_IDENTIFIER_BYTES = 63


@dataclass(frozen=True)
class PostgresOptions:
    """Where the migrated tables go. ``tables`` ``None`` migrates every QLDB table."""

    dsn: str
    schema: str = "qldb"
    table_prefix: str = ""
    tables: frozenset[str] | None = None
    create: bool = True

    def __post_init__(self) -> None:
        if not self.dsn.strip():
            raise ConfigurationError("postgres: set dsn (a libpq connection string or URI)")
        for what, name in (("schema", self.schema), ("table_prefix", self.table_prefix)):
            if "\x00" in name or len(name.encode()) > MAX_IDENTIFIER_BYTES - 16:
                raise ConfigurationError(
                    f"postgres: {what} {name!r} is too long or holds NUL: PostgreSQL names are at most "
                    f"{MAX_IDENTIFIER_BYTES} bytes and the table suffixes need room"
                )
        if not self.schema:
            raise ConfigurationError("postgres: schema must not be empty")

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> PostgresOptions:
        unknown = sorted(set(settings) - _KEYS)
        if unknown:
            raise ConfigurationError(f"postgres: unknown settings {unknown}; known: {sorted(_KEYS)}")
        if "dsn" not in settings:
            raise ConfigurationError("postgres: set dsn (a libpq connection string or URI)")
        create = settings.get("create", "true").strip().lower()
        if create not in ("true", "false"):
            raise ConfigurationError(f"postgres: create must be true or false, got {create!r}")
        tables = settings.get("tables")
        return cls(
            dsn=settings["dsn"],
            schema=settings.get("schema", "qldb"),
            table_prefix=settings.get("table_prefix", ""),
            tables=frozenset(t.strip() for t in tables.split(",") if t.strip()) if tables else None,
            create=create == "true",
        )
