"""The window engine: events in, window results out. Pure: no I/O, no clock - only event times.

Watermark and lateness (times in ms, per query)::

    high(s)    = the newest event time seen on shard s
    watermark  = min(high(s) over the shards being read) - out_of_orderness      ("shards" mode)
               = max(high(s) over every shard)            - out_of_orderness      ("global" mode)
    a window [start, end) FIRES  when watermark >= end                  -> revision 1 of its result
    a late event (end <= watermark < end + allowed_lateness) updates it -> revision 2, 3, ...
    a window is PURGED when watermark >= end + allowed_lateness         -> its result is final;
    an event for a purged window is counted in ``dropped_late`` and changes nothing.

The watermark never goes back. No window fires before ``min_shards`` shards have delivered records
(set it to the stream's shard count: a shard not seen yet cannot hold the watermark back). A shard
that read CONTROL ``COMPLETED`` stops holding it back, and when every shard read has completed (or
was released after one did) the watermark jumps to the end: every window fires and is purged.
:meth:`WindowEngine.drain` does the same on request.

Exactly once under redelivery: each window keeps the keys (``documentId#version``) of the events
it counted, until it is purged; an event seen again is counted in ``duplicates`` and changes
nothing. Results are emitted record by record, so for one shard's record order the emitted
revisions are the same on every replay.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from qldbstream_handlers.analytics.query import Event, Query
from qldbstream_handlers.analytics.results import Emission, Pane, Retraction, WindowResult
from qldbstream_handlers.analytics.windows import Session

__all__ = ["END_OF_INPUT", "WindowEngine"]

#: The watermark once the input has ended: every window fires and is purged.
END_OF_INPUT = 2**62
_FIRE, _PURGE = 0, 1
_Key = tuple[int, int, str | None]


class _Win:
    __slots__ = ("accs", "dirty", "emitted", "end", "final", "group", "revision", "seen", "start")

    def __init__(self, start: int, end: int, group: str | None, accs: list[list[Any]]) -> None:
        self.start, self.end, self.group, self.accs = start, end, group, accs
        self.seen: set[str] = set()
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


class WindowEngine:
    """Windows of one :class:`Query` (for all shards, or for one when ``shard`` labels it)."""

    def __init__(
        self, query: Query, *, watermark: str = "shards", min_shards: int = 1, shard: str | None = None
    ) -> None:
        self.query = query
        self.mode = watermark
        self.min_shards = min_shards
        self.shard = shard
        self._reset()

    def _reset(self) -> None:
        self._wins: dict[_Key, _Win] = {}
        self._sessions: dict[str | None, list[_Win]] = {}
        self._panes: dict[tuple[int, int], set[str | None]] = {}
        self._heap: list[tuple[int, int, int, int, bool, str]] = []
        self._refire: set[_Key] = set()
        self._high: dict[str, int] = {}
        self._active: set[str] = set()
        self._seen_shards: set[str] = set()
        self._completed: set[str] = set()
        self._wm: int | None = None
        self.counters = {"events": 0, "duplicates": 0, "late_updates": 0, "dropped_late": 0}

    # --- input -----------------------------------------------------------------------------
    def add(self, shard: str, event: Event) -> None:
        """Count ``event`` (read on ``shard``) into its windows; call :meth:`advance` after."""
        self._seen_shards.add(shard)
        self._active.add(shard)
        self._high[shard] = max(self._high.get(shard, event.time), event.time)
        wm = self.watermark()
        if isinstance(self.query.window, Session):
            self._add_session(event, wm, self.query.window.gap)
            return
        lateness = self.query.lateness_ms
        for start, end in self.query.window.assign(event.time):
            if wm is not None and end + lateness <= wm:
                self.counters["dropped_late"] += 1
                continue
            key = (start, end, event.group)
            w = self._wins.get(key)
            if w is None:
                w = self._create(start, end, event.group)
            self._apply(w, event, wm)

    def _create(self, start: int, end: int, group: str | None) -> _Win:
        w = _Win(start, end, group, [a.new() for a in self.query.aggregates])
        self._wins[w.key] = w
        if not isinstance(self.query.window, Session):
            self._panes.setdefault((start, end), set()).add(group)
        self._schedule(w)
        return w

    def _schedule(self, w: _Win) -> None:
        flag, text = _gsort(w.group)
        heapq.heappush(self._heap, (w.end, _FIRE, w.start, w.end, flag, text))
        heapq.heappush(self._heap, (w.end + self.query.lateness_ms, _PURGE, w.start, w.end, flag, text))

    def _apply(self, w: _Win, event: Event, wm: int | None) -> None:
        if event.key in w.seen:
            self.counters["duplicates"] += 1
            return
        w.seen.add(event.key)
        for agg, acc, value in zip(self.query.aggregates, w.accs, event.values, strict=True):
            agg.add(acc, value)
        w.dirty = True
        self.counters["events"] += 1
        if wm is not None and w.end <= wm:
            self.counters["late_updates"] += 1
            self._refire.add(w.key)

    def _add_session(self, event: Event, wm: int | None, gap: int) -> None:
        sessions = self._sessions.setdefault(event.group, [])
        lo, hi = event.time, event.time + gap
        overlapping = [w for w in sessions if w.start < hi and lo < w.end]
        if any(event.key in w.seen for w in overlapping):
            self.counters["duplicates"] += 1
            return
        start = min([lo, *(w.start for w in overlapping)])
        end = max([hi, *(w.end for w in overlapping)])
        if wm is not None and end + self.query.lateness_ms <= wm:
            self.counters["dropped_late"] += 1
            return
        if not overlapping:
            w = self._create(start, end, event.group)
            sessions.append(w)
            sessions.sort(key=lambda s: s.start)
        else:
            w = overlapping[0]
            for other in overlapping[1:]:
                for agg, acc, more in zip(self.query.aggregates, w.accs, other.accs, strict=True):
                    agg.merge(acc, more)
                w.seen |= other.seen
                w.revision = max(w.revision, other.revision)
                w.emitted.extend(other.emitted)
                sessions.remove(other)
                del self._wins[other.key]
            if (start, end) != (w.start, w.end):
                del self._wins[w.key]
                w.start, w.end = start, end
                self._wins[w.key] = w
                self._schedule(w)
            w.dirty = True
        self._apply(w, event, wm)

    def complete(self, shard: str) -> None:
        """``shard`` delivered CONTROL ``COMPLETED``: the QLDB stream wrote everything before it."""
        self._seen_shards.add(shard)
        self._active.add(shard)
        self._completed.add(shard)

    def release(self, shard: str) -> None:
        """The runtime gave ``shard`` up (ended or lease lost): it no longer holds the watermark."""
        self._active.discard(shard)

    # --- the watermark ---------------------------------------------------------------------
    def watermark(self) -> int | None:
        """The current watermark (``None``: no window may fire yet). Never decreases."""
        limiting = [self._high[s] for s in self._active if s not in self._completed and s in self._high]
        candidate: int | None = None
        if len(self._seen_shards) < self.min_shards:
            candidate = None  # a shard not seen yet may still bring early events
        elif self._completed and not (self._active - self._completed):
            candidate = END_OF_INPUT
        elif self.mode == "global":
            candidate = max(self._high.values()) - self.query.delay_ms if self._high else None
        elif limiting:
            candidate = min(limiting) - self.query.delay_ms
        if candidate is not None and (self._wm is None or candidate > self._wm):
            self._wm = candidate
        return self._wm

    # --- output ----------------------------------------------------------------------------
    def drain(self) -> list[Emission]:
        """End of input: fire and purge every window."""
        self._wm = END_OF_INPUT
        return self.advance()

    def advance(self) -> list[Emission]:
        """Fire and purge what the watermark has passed; the results, in window order."""
        wm = self.watermark()
        if wm is None:
            return []
        due: dict[_Key, _Win] = {}
        while self._heap and self._heap[0][0] <= wm:
            _, _, start, end, flag, text = heapq.heappop(self._heap)
            key = (start, end, text if flag else None)
            w = self._wins.get(key)
            if w is not None:
                due[key] = w
        for key in self._refire:
            w = self._wins.get(key)
            if w is not None and w.end <= wm:
                due[key] = w
        self._refire.clear()
        lateness = self.query.lateness_ms
        emit = [w for w in due.values() if w.dirty or (not w.final and w.end + lateness <= wm)]
        out: list[Emission] = []
        if isinstance(self.query.window, Session):
            for w in sorted(emit, key=lambda w: (w.start, w.end, _gsort(w.group))):
                out.extend(self._emit_session(w, wm))
        else:
            by_bounds: dict[tuple[int, int], list[_Win]] = {}
            for w in emit:
                by_bounds.setdefault((w.start, w.end), []).append(w)
            for bounds in sorted(by_bounds):
                out.append(self._emit_pane(bounds, by_bounds[bounds], wm))
        for w in due.values():
            if w.end + lateness <= wm:
                self._purge(w)
        return out

    def _mark(self, w: _Win, wm: int) -> bool:
        updated = w.dirty
        if w.dirty:
            w.revision += 1
            w.dirty = False
        w.final = w.end + self.query.lateness_ms <= wm
        return updated

    def _result(self, w: _Win) -> WindowResult:
        values = {a.name: a.result(acc) for a, acc in zip(self.query.aggregates, w.accs, strict=True)}
        return WindowResult(self.query.name, w.start, w.end, w.group, w.revision, w.final, values, self.shard)

    def _emit_pane(self, bounds: tuple[int, int], changed: list[_Win], wm: int) -> Pane:
        updated = {w.group for w in changed if self._mark(w, wm)}
        groups = sorted(self._panes.get(bounds, ()), key=_gsort)
        rows = tuple(self._result(self._wins[(bounds[0], bounds[1], g)]) for g in groups)
        return Pane(
            self.query.name,
            bounds[0],
            bounds[1],
            False,
            rows,
            frozenset(w.group for w in changed),
            frozenset(updated),
            self.shard,
        )

    def _emit_session(self, w: _Win, wm: int) -> list[Emission]:
        out: list[Emission] = [
            Retraction(self.query.name, s, e, w.group, w.revision, self.shard)
            for s, e in sorted(set(w.emitted))
            if (s, e) != (w.start, w.end)
        ]
        updated = self._mark(w, wm)
        w.emitted = [(w.start, w.end)]
        group = frozenset([w.group])
        out.append(
            Pane(
                self.query.name,
                w.start,
                w.end,
                True,
                (self._result(w),),
                group,
                group if updated else frozenset(),
                self.shard,
            )
        )
        return out

    def _purge(self, w: _Win) -> None:
        self._wins.pop(w.key, None)
        if isinstance(self.query.window, Session):
            sessions = self._sessions.get(w.group, [])
            if w in sessions:
                sessions.remove(w)
            if not sessions:
                self._sessions.pop(w.group, None)
        else:
            groups = self._panes.get((w.start, w.end))
            if groups is not None:
                groups.discard(w.group)
                if not groups:
                    del self._panes[(w.start, w.end)]

    # --- state -----------------------------------------------------------------------------
    @property
    def open_windows(self) -> int:
        return len(self._wins)

    @property
    def state_keys(self) -> int:
        """Event keys held for de-duplication (the state's main size)."""
        return sum(len(w.seen) for w in self._wins.values())

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: open windows (partial aggregates, keys), shard progress, the watermark."""
        aggs = self.query.aggregates
        return {
            "fingerprint": self.query.fingerprint(),
            "watermark": self._wm,
            "high": dict(sorted(self._high.items())),
            "active": sorted(self._active),
            "seen_shards": sorted(self._seen_shards),
            "completed": sorted(self._completed),
            "counters": dict(self.counters),
            "windows": [
                {
                    "start": w.start,
                    "end": w.end,
                    "group": w.group,
                    "accs": [a.dump(acc) for a, acc in zip(aggs, w.accs, strict=True)],
                    "seen": sorted(w.seen),
                    "revision": w.revision,
                    "dirty": w.dirty,
                    "final": w.final,
                    "emitted": [list(b) for b in w.emitted],
                }
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
        self.counters.update(state["counters"])
        aggs = self.query.aggregates
        for raw in state["windows"]:
            w = self._create(raw["start"], raw["end"], raw["group"])
            w.accs = [a.load(acc) for a, acc in zip(aggs, raw["accs"], strict=True)]
            w.seen = set(raw["seen"])
            w.revision, w.dirty, w.final = raw["revision"], raw["dirty"], raw["final"]
            w.emitted = [(int(s), int(e)) for s, e in raw["emitted"]]
            if isinstance(self.query.window, Session):
                self._sessions.setdefault(w.group, []).append(w)
            if w.revision > 0 and w.dirty:
                self._refire.add(w.key)
