"""What the window engine emits: results, panes (what changed for one window) and retractions.

A result's ``key`` - ``query|shard|start|end|group`` - is a function of the window alone: sinks
write idempotently by it, and ``revision`` (1, 2, ... per key) orders corrections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qldbstream_handlers.analytics.aggregates import Value

__all__ = ["Emission", "Pane", "Retraction", "WindowResult"]


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One group's result for one window: deterministic ``key``, ``revision`` 1, 2, ... per key."""

    query: str
    window_start: int
    window_end: int
    group: str | None
    revision: int
    #: No later event can change it (the window was purged).
    final: bool
    values: Mapping[str, Value]
    #: The shard, when windows are kept per shard (``scope = shard``).
    shard: str | None = None

    @property
    def key(self) -> str:
        return f"{self.query}|{self.shard or ''}|{self.window_start}|{self.window_end}|{self.group}"


@dataclass(frozen=True, slots=True)
class Pane:
    """What changed for one window's bounds: every group's current row (a session: its one group)."""

    query: str
    window_start: int
    window_end: int
    #: ``True`` for a session window: the pane holds one group and its bounds can later change.
    session: bool
    rows: tuple[WindowResult, ...]
    #: Groups whose row differs from the last emission (new content or newly final).
    changed: frozenset[str | None]
    #: Groups whose content changed (a new revision).
    updated: frozenset[str | None]
    shard: str | None = None

    @property
    def key(self) -> tuple[str, str, int, int, str | None]:
        group = self.rows[0].group if self.session else "*"
        return (self.query, self.shard or "", self.window_start, self.window_end, group)


@dataclass(frozen=True, slots=True)
class Retraction:
    """A session result whose bounds are gone (merged or extended): sinks delete it."""

    query: str
    window_start: int
    window_end: int
    group: str | None
    revision: int
    shard: str | None = None

    @property
    def key(self) -> tuple[str, str, int, int, str | None]:
        return (self.query, self.shard or "", self.window_start, self.window_end, self.group)


Emission = Pane | Retraction
