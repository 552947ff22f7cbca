"""qldbstream-native, the compiled hot path: one registry and one switch for every stage that uses it.

Each stage module imports its compiled functions when the extension is installed and keeps its
pure-Python code as the reference (identical results, parity-tested). A stage is a module with
``native_available()`` and ``use_native(enabled)``, which rebinds the module-level function the
hot path reads (no indirection per call). The core's stages are on the registry from the start -
KPL (:mod:`qldbstream.core.deaggregate`), the record scan (:mod:`qldbstream.core.decode`), the
hash combinators ``dot`` and ``merkle_root`` (:mod:`qldbstream.core.qldb_hash`) and the V3/V9
state (:mod:`qldbstream.core.verify`); a stage of an outer room (Lambda events,
:mod:`qldbstream.io.lambda_event`) puts itself on it with :func:`register` when it is imported,
so the core never imports the outer rooms.

:func:`use` switches every registered stage at once - for tests and benchmarks; production code
never needs to. A stage registered after a :func:`use` follows it; :func:`reset` puts every stage
back to its default (its compiled code when it found it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TypeVar

__all__ = ["available", "chosen", "register", "reset", "stages", "use"]

T = TypeVar("T")

#: module name -> the module (``None``: a core stage, imported when the switch is first used - the
#: stages import :func:`chosen` from here, so this module cannot import them when it is loaded)
_REGISTRY: dict[str, ModuleType | None] = dict.fromkeys(
    (
        "qldbstream.core.deaggregate",
        "qldbstream.core.decode",
        "qldbstream.core.qldb_hash",
        "qldbstream.core.verify",
    )
)
#: the last :func:`use` (``None``: every stage at its default), applied to stages registered later
_chosen: list[bool] = []


def chosen(enabled: bool, native: T | None, fallback: T) -> T:
    """``native`` when enabled (it must be installed), else ``fallback``: a stage's ``use_native``."""
    if enabled and native is None:
        raise RuntimeError("qldbstream-native is not installed")
    return native if enabled and native is not None else fallback


def register(stage: ModuleType) -> None:
    """Put a stage module (``native_available()``, ``use_native(enabled)``) on the switch; it
    follows a :func:`use` made before it was registered."""
    _REGISTRY[stage.__name__] = stage
    if _chosen:
        stage.use_native(_chosen[-1])


def stages() -> tuple[ModuleType, ...]:
    """Every registered stage module."""
    for name, module in _REGISTRY.items():
        if module is None:
            _REGISTRY[name] = importlib.import_module(name)
    return tuple(m for m in _REGISTRY.values() if m is not None)


def available() -> bool:
    """True when every stage found its compiled function (the extension is installed and current)."""
    return all(stage.native_available() for stage in stages())


def use(enabled: bool) -> None:
    """Switch every stage to the compiled (``True``) or the pure-Python (``False``) code."""
    for stage in stages():
        stage.use_native(enabled)
    _chosen[:] = [enabled]


def reset() -> None:
    """Every stage back to its default: its compiled function when it found one."""
    for stage in stages():
        stage.use_native(stage.native_available())
    _chosen.clear()
