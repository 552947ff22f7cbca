"""qldbstream-native, the compiled hot path: one switch for every stage that uses it.

Each stage module imports its compiled function when the extension is installed and keeps its
pure-Python code as the reference (identical results, parity-tested): base64 and Lambda events
(:mod:`qldbstream.io.lambda_event`), KPL (:mod:`qldbstream.core.deaggregate`), the record scan
(:mod:`qldbstream.core.decode`) and the V3/V9 state (:mod:`qldbstream.core.verify`). :func:`use` switches
all of them at once - for tests and benchmarks; production code never needs to.
"""

from __future__ import annotations

from types import ModuleType
from typing import TypeVar

__all__ = ["available", "chosen", "reset", "use"]

T = TypeVar("T")


def chosen(enabled: bool, native: T | None, fallback: T) -> T:
    """``native`` when enabled (it must be installed), else ``fallback``: a stage's ``use_native``."""
    if enabled and native is None:
        raise RuntimeError("qldbstream-native is not installed")
    return native if enabled and native is not None else fallback


def _stages() -> tuple[ModuleType, ...]:
    from qldbstream.core import deaggregate, decode, verify
    from qldbstream.io import lambda_event

    return (lambda_event, deaggregate, decode, verify)


def available() -> bool:
    """True when every stage found its compiled function (the extension is installed and current)."""
    return all(stage.native_available() for stage in _stages())


def use(enabled: bool) -> None:
    """Switch every stage to the compiled (``True``) or the pure-Python (``False``) code."""
    for stage in _stages():
        stage.use_native(enabled)


def reset() -> None:
    """Every stage back to its default: its compiled function when it found one."""
    for stage in _stages():
        stage.use_native(stage.native_available())
