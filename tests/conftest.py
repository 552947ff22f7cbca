"""Session-wide local servers on 127.0.0.1: kinesis-local and moto server.

Each starts on first use, once per session, and is stopped by PID when the session ends. Start-up
failures are errors, never skips: CI must run the integration tests. Tests that use them must carry
``@pytest.mark.integration`` (checked at collection).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import LocalServer, MotoServer, start_kinesis_local, start_moto_server

pytest_plugins = ["tests.support.scanners"]

SERVER_FIXTURES = frozenset({"kinesis_local", "moto_server", "kinesis_server"})


@pytest.fixture(scope="session")
def kinesis_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """kinesis-local (kinesis-mock): the faithful Kinesis, with shard end, ChildShards and resharding."""
    server = start_kinesis_local(tmp_path_factory.mktemp("kinesis-local"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto server: Kinesis (the demo's default), DynamoDB, SQS, S3, CloudWatch. ``.reset()`` clears it."""
    server = start_moto_server(tmp_path_factory.mktemp("moto-server"))
    yield server
    server.stop()


@pytest.fixture(params=["kinesis-local", "moto"])
def kinesis_server(request: pytest.FixtureRequest) -> LocalServer:
    """Each Kinesis stand-in in turn, for the contract both must honour (``request.param`` names it)."""
    name = "kinesis_local" if request.param == "kinesis-local" else "moto_server"
    server: LocalServer = request.getfixturevalue(name)
    return server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that start local servers must be marked @pytest.mark.integration: " + ", ".join(unmarked)
        )
