"""Pane states: a window engine's windows in JSON form - what the handler stores when a pane is
purged (its archive) or changed (a shard's *part*), the engine's whole state - and the union of
several shards' parts of a window (:func:`merge_parts`).

:class:`PaneStates` is the base of :class:`~qldbstream_handlers.analytics.engine.WindowEngine`
that purges panes and sessions, turns windows into pane states and back, and saves and loads the
engine's state; :mod:`~qldbstream_handlers.analytics.engine` explains when panes are purged,
reopened and handed out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qldbstream_handlers.analytics.query import Query
from qldbstream_handlers.analytics.results import Pane, WindowResult

__all__ = ["STATE_VERSION", "Bounds", "PaneStates", "merge_parts"]

#: Version of :meth:`WindowEngine.to_state` (1: event keys without values; still loaded).
STATE_VERSION = 2
_Key = tuple[int, int, str | None]
Bounds = tuple[int, int]
#: an event's values as kept per key (``None``: loaded from version-1 state, values unknown)
_Values = list[str | None] | None


class _Win:
    __slots__ = ("accs", "dirty", "emitted", "end", "final", "group", "revision", "seen", "start")

    def __init__(self, start: int, end: int, group: str | None, accs: list[list[Any]]) -> None:
        self.start, self.end, self.group, self.accs = start, end, group, accs
        #: event key -> the event's values (dumped), for de-duplication and exact unions
        self.seen: dict[str, _Values] = {}
        self.revision = 0
        self.dirty = True
        self.final = False
        #: bounds under which results were emitted and not yet retracted (sessions move)
        self.emitted: list[tuple[int, int]] = []

    @property
    def key(self) -> _Key:
        return (self.start, self.end, self.group)


def _gsort(group: str | None) -> tuple[bool, str]:
    return (group is not None, group or "")


class PaneStates:
    """Purging, pane states and the engine's state; the engine provides the windows and the query."""

    query: Query
    parts: bool
    counters: dict[str, int]
    _session: bool
    _wins: dict[_Key, _Win]
    _sessions: dict[str | None, list[_Win]]
    _panes: dict[Bounds, set[str | None]]
    _refire: set[_Key]
    _high: dict[str, int]
    _active: set[str]
    _seen_shards: set[str]
    _completed: set[str]
    _ended: bool
    _wm: int | None
    _pane_rev: dict[Bounds, int]
    _changed: set[Bounds]
    _archived: dict[Bounds, dict[str, Any]]
    _reopened: set[Bounds]
    _closed: set[Bounds]

    if TYPE_CHECKING:

        def _create(self, start: int, end: int, group: str | None) -> _Win: ...

        def _reset(self) -> None: ...

    # --- purging: a pane's state goes to the archive ----------------------------------------
    def _purge_pane(self, bounds: Bounds) -> None:
        """Purge every group of a pane together; its state goes to the archive."""
        groups = self._panes.pop(bounds, set())
        windows = [self._wins.pop((bounds[0], bounds[1], g)) for g in sorted(groups, key=_gsort)]
        if windows:
            self._archived[bounds] = self._pane_state(bounds, windows)
            self._closed.add(bounds)
        self._reopened.discard(bounds)
        self._changed.discard(bounds)

    def _purge_session(self, w: _Win) -> None:
        self._wins.pop(w.key, None)
        sessions = self._sessions.get(w.group, [])
        if w in sessions:
            sessions.remove(w)
        if not sessions:
            self._sessions.pop(w.group, None)

    # --- panes: what the handler stores (archives, parts) ------------------------------------
    def _raw(self, w: _Win) -> dict[str, Any]:
        aggs = self.query.aggregates
        return {
            "start": w.start,
            "end": w.end,
            "group": w.group,
            "accs": [a.dump(acc) for a, acc in zip(aggs, w.accs, strict=True)],
            "seen": dict(sorted(w.seen.items())),
            "revision": w.revision,
            "dirty": w.dirty,
            "final": w.final,
            "emitted": [list(b) for b in w.emitted],
        }

    def _restore(self, raw: Mapping[str, Any]) -> _Win:
        aggs = self.query.aggregates
        w = self._create(int(raw["start"]), int(raw["end"]), raw["group"])
        w.accs = [a.load(acc) for a, acc in zip(aggs, raw["accs"], strict=True)]
        seen = raw["seen"]
        w.seen = dict(seen) if isinstance(seen, Mapping) else dict.fromkeys(seen)  # version 1: keys only
        w.revision, w.dirty, w.final = int(raw["revision"]), bool(raw["dirty"]), bool(raw["final"])
        w.emitted = [(int(s), int(e)) for s, e in raw.get("emitted", [])]
        if self._session:
            self._sessions.setdefault(w.group, []).append(w)
        if w.revision > 0 and w.dirty:
            self._refire.add(w.key)
        return w

    def _pane_state(self, bounds: Bounds, windows: Sequence[_Win]) -> dict[str, Any]:
        return {
            "start": bounds[0],
            "end": bounds[1],
            "revision": self._pane_rev.get(bounds, 0),
            "final": all(w.final for w in windows),
            "windows": [self._raw(w) for w in windows],
        }

    def take_panes(self) -> dict[Bounds, dict[str, Any]]:
        """Pane states for the handler to store, each with a pane revision one higher than the last
        one taken: the panes purged since the last call (always), and with ``parts`` every pane
        whose content or finality changed. Purged panes leave memory with this call."""
        wanted = set(self._archived) | (self._changed if self.parts else set())
        out: dict[Bounds, dict[str, Any]] = {}
        for bounds in sorted(wanted):
            state = self._archived.pop(bounds, None)
            if state is None:
                groups = sorted(self._panes.get(bounds, ()), key=_gsort)
                if not groups:
                    continue
                state = self._pane_state(bounds, [self._wins[(bounds[0], bounds[1], g)] for g in groups])
            revision = self._pane_rev.get(bounds, 0) + 1
            state["revision"] = revision
            if bounds in self._panes:
                self._pane_rev[bounds] = revision
            else:
                self._pane_rev.pop(bounds, None)
            out[bounds] = state
        self._changed.clear()
        return out

    def is_open(self, bounds: Bounds) -> bool:
        """Whether the pane is in memory (not purged)."""
        return bounds in self._panes

    # --- state -----------------------------------------------------------------------------
    @property
    def open_windows(self) -> int:
        return len(self._wins)

    @property
    def state_keys(self) -> int:
        """Event keys held for de-duplication (the state's main size)."""
        return sum(len(w.seen) for w in self._wins.values())

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: open windows (partial aggregates, keys), shard progress, the watermark.

        Panes purged but not yet taken (:meth:`take_panes`) are not in it: take them first."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.query.fingerprint(),
            "watermark": self._wm,
            "ended": self._ended,
            "high": dict(sorted(self._high.items())),
            "active": sorted(self._active),
            "seen_shards": sorted(self._seen_shards),
            "completed": sorted(self._completed),
            "counters": dict(self.counters),
            "pane_revisions": [[s, e, r] for (s, e), r in sorted(self._pane_rev.items())],
            "closed": [list(b) for b in sorted(self._closed)],
            "windows": [
                self._raw(w)
                for w in sorted(self._wins.values(), key=lambda w: (w.start, w.end, _gsort(w.group)))
            ],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state` output (raises ``ValueError`` when the query changed)."""
        if state.get("fingerprint") != self.query.fingerprint():
            raise ValueError(
                f"the saved state of query {self.query.name} was made by another definition "
                f"({state.get('fingerprint')!r}, now {self.query.fingerprint()!r})"
            )
        self._reset()
        self._wm = state["watermark"]
        self._high = {k: int(v) for k, v in state["high"].items()}
        self._active = set(state["active"])
        self._seen_shards = set(state["seen_shards"])
        self._completed = set(state["completed"])
        # version 1 ended the input only once every shard read had completed
        self._ended = bool(state.get("ended", self._completed and not (self._active - self._completed)))
        self.counters.update(state["counters"])
        self._pane_rev = {(int(s), int(e)): int(r) for s, e, r in state.get("pane_revisions", [])}
        self._closed = {(int(s), int(e)) for s, e in state.get("closed", [])}
        for raw in state["windows"]:
            self._restore(raw)


def merge_parts(query: Query, bounds: Bounds, parts: Sequence[Mapping[str, Any]]) -> Pane:
    """One result per group for a tumbling or hopping window, from the pane states of several
    shards (:meth:`WindowEngine.take_panes`): the union of their events, each counted once.

    The result's revision is the sum of the parts' revisions - it grows whenever any part grows, so
    a result written from fewer or older parts never overwrites a newer one - and it is final when
    every part is."""
    aggs = query.aggregates
    by_group: dict[str | None, list[Mapping[str, Any]]] = {}
    for part in parts:
        for raw in part["windows"]:
            by_group.setdefault(raw["group"], []).append(raw)
    revision = sum(int(p["revision"]) for p in parts)
    final = all(bool(p["final"]) for p in parts)
    rows = []
    for group in sorted(by_group, key=_gsort):
        raws = by_group[group]
        events: dict[str, Any] = {}
        legacy = False
        for raw in raws:
            seen = raw["seen"]
            if not isinstance(seen, Mapping) or any(v is None for v in seen.values()):
                legacy = True
                break
            events.update(seen)
        accs = [a.new() for a in aggs]
        if legacy:  # values unknown (version-1 state): merge the partial aggregates
            for raw in raws:
                for a, acc, more in zip(aggs, accs, raw["accs"], strict=True):
                    a.merge(acc, a.load(more))
        else:
            for key in sorted(events):
                for a, acc, value in zip(aggs, accs, events[key], strict=True):
                    a.add(acc, a.load_value(value))
        values = {a.name: a.result(acc) for a, acc in zip(aggs, accs, strict=True)}
        rows.append(WindowResult(query.name, bounds[0], bounds[1], group, revision, final, values, None))
    groups = frozenset(by_group)
    return Pane(query.name, bounds[0], bounds[1], False, tuple(rows), groups, groups, None)
