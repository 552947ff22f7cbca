"""Fixtures of the handler tests: a real PostgreSQL server for the PostgreSQL migration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresUnavailable, find_binaries, start_postgres


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for the session (tests/support/postgres.py): its DSN.

    Skipped only when the machine has no PostgreSQL binaries and this is not CI; under
    ``CI=true`` a missing server fails the tests (.ci/run installs it).
    """
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    try:
        import psycopg  # noqa: F401 - the dev extra has it

        find_binaries()
    except (ImportError, PostgresUnavailable) as exc:
        if ci:
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    server = start_postgres()
    yield server.dsn
    server.stop()
