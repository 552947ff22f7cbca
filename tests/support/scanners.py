"""pytest plugin: run tests under both scanners, the pure-Python one and qldbstream-native.

Register it once (``pytest_plugins = ["tests.support.scanners"]`` in ``tests/conftest.py``).
Then a test - or a suite, through an autouse fixture of its own - that asks for ``scanner``
runs twice: with ``"python"`` (every stage's pure-Python code: event reading, KPL, the scan, the
V3/V9 state) and with ``"native"`` (the compiled extension), through :func:`qldbstream.core.native.use`.
The switch is undone after each test, back to the default (native when installed).

Without the extension the ``"native"`` runs are skipped, unless ``REQUIRE_QLDBSTREAM_NATIVE=1``
(not a ``QLDBSTREAM_`` variable: those are settings, and unknown settings are refused)
(CI), which makes them fail instead: a CI that silently tested only the fallback would pass for
the wrong reason. The run's header says which scanner is the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from qldbstream.core import decode, native

__all__ = ["REQUIRE_NATIVE", "SCANNERS", "scanner"]

SCANNERS = ("python", "native")
REQUIRE_NATIVE = os.environ.get("REQUIRE_QLDBSTREAM_NATIVE") == "1"


@pytest.fixture(params=SCANNERS)
def scanner(request: pytest.FixtureRequest) -> Iterator[str]:
    """``"python"`` or ``"native"``: the scanner (and KPL parser) the test runs with."""
    name: str = request.param
    compiled = name == "native"
    if compiled and not native.available():
        if REQUIRE_NATIVE:
            pytest.fail("REQUIRE_QLDBSTREAM_NATIVE=1 but qldbstream-native is not installed")
        pytest.skip("qldbstream-native is not installed")
    native.use(compiled)
    try:
        yield name
    finally:
        native.reset()


def pytest_report_header(config: pytest.Config) -> str:
    if decode.native_available():
        import qldbstream_native

        where = os.path.dirname(qldbstream_native.__file__ or "")
        return f"qldbstream-native: installed ({where}), the default scanner"
    required = " - REQUIRED (REQUIRE_QLDBSTREAM_NATIVE=1)" if REQUIRE_NATIVE else ""
    return f"qldbstream-native: not installed, pure-Python scanner{required}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_NATIVE and not native.available():
        raise pytest.UsageError("REQUIRE_QLDBSTREAM_NATIVE=1 but qldbstream-native is not installed")
