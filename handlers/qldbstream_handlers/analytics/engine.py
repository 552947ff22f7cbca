"""The window engine: events in, window results out. Pure: no I/O, no clock - only event times.

Watermark and lateness (times in ms, per query)::

    high(s)    = the newest event time seen on shard s (or the end of a Lambda processing window
                 that closed for s: :meth:`WindowEngine.progress`)
    watermark  = min(high(s) over the shards being read) - out_of_orderness      ("shards" mode)
               = max(high(s) over every shard)            - out_of_orderness      ("global" mode)
    a window [start, end) FIRES  when watermark >= end                  -> revision 1 of its result
    a late event (end <= watermark < end + allowed_lateness) updates it -> revision 2, 3, ...
    a window is PURGED when watermark >= end + allowed_lateness         -> its result is final;
    an event for a purged window REOPENS it                              -> revision n+1, final again

**Nothing is dropped.** A purged tumbling or hopping window leaves memory as a *pane state* (every
group's aggregates and event keys, :meth:`WindowEngine.take_panes`) that the handler stores; an event
that arrives for it later (a shard read far behind the others, a revision reordered behind CONTROL
``COMPLETED``) makes the handler load that state back (:meth:`WindowEngine.closed` names the
panes, :meth:`WindowEngine.reopen` restores them), the event is counted, and the corrected result
is emitted and purged again. ``allowed_lateness`` therefore only decides how long a window stays
in memory. Stored panes are forgotten ``keep_closed`` (event time) behind the newest event
(:meth:`WindowEngine.expire`; default a day, Kinesis's default retention: nothing older can still
be read); an event for a forgotten pane is counted in ``dropped_late``. Session windows are the
other exception: a session can only be found again by its group and time, so an event for a
purged session is counted in ``dropped_late`` (set ``allowed_lateness`` for sessions to the
disorder you expect).

The watermark never goes back. No window fires before ``min_shards`` shards have delivered records
(set it to the stream's shard count: a shard not seen yet cannot hold the watermark back; firing
too early costs a corrected revision, not a loss). A released shard stops holding it back. CONTROL
``COMPLETED`` (QLDB wrote everything) ends the input: the watermark jumps to the end, every window
fires and is purged; records still read after it - other shards' tails, reordered duplicates -
reopen their windows. :meth:`WindowEngine.drain` does the same on request.

Exactly once under redelivery: each window keeps the keys (``documentId#version``) of the events
it counted, with their values; an event seen again is counted in ``duplicates`` and changes
nothing. Results are emitted record by record, so for one shard's record order the emitted
revisions are the same on every replay.

**Parts** (``parts=True``, the handler's ``scope = shard``): every pane whose content or finality
changed is handed out by :meth:`take_panes` (not only purged ones), with a pane revision that grows
by one each time, so that the handler can store it as this shard's *part* of the window and unite
the parts of every shard (:func:`merge_parts`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from qldbstream_handlers.analytics.panes import (
    STATE_VERSION,
    Bounds,
    PaneStates,
    _gsort,
    _Key,
    _Win,
    merge_parts,
)
from qldbstream_handlers.analytics.query import Event, Query
from qldbstream_handlers.analytics.results import Emission, Pane, Retraction, WindowResult
from qldbstream_handlers.analytics.windows import Session

__all__ = ["END_OF_INPUT", "STATE_VERSION", "Bounds", "WindowEngine", "merge_parts"]

#: The watermark once the input has ended: every window fires and is purged.
END_OF_INPUT = 2**62
_FIRE, _PURGE = 0, 1


class WindowEngine(PaneStates):
    """Windows of one :class:`Query` (for all shards, or for one when ``shard`` labels it)."""

    def __init__(
        self,
        query: Query,
        *,
        watermark: str = "shards",
        min_shards: int = 1,
        shard: str | None = None,
        parts: bool = False,
        keep_closed_ms: int = 86_400_000,
    ) -> None:
        self.query = query
        self.mode = watermark
        self.min_shards = min_shards
        self.shard = shard
        self.parts = parts
        #: how long (in event time, behind the newest event) a purged pane stays reopenable
        self.keep_closed_ms = keep_closed_ms
        self._session = isinstance(query.window, Session)
        self._reset()

    def _reset(self) -> None:
        self._wins: dict[_Key, _Win] = {}
        self._sessions: dict[str | None, list[_Win]] = {}
        self._panes: dict[Bounds, set[str | None]] = {}
        self._heap: list[tuple[int, int, int, int, bool, str]] = []
        self._refire: set[_Key] = set()
        self._high: dict[str, int] = {}
        self._active: set[str] = set()
        self._seen_shards: set[str] = set()
        self._completed: set[str] = set()
        self._ended = False
        self._wm: int | None = None
        #: pane -> revision of this engine's state of it (grows by one per :meth:`take_panes`)
        self._pane_rev: dict[Bounds, int] = {}
        #: panes changed since the last take (``parts`` only)
        self._changed: set[Bounds] = set()
        #: panes purged since the last take: their states, for the handler to store
        self._archived: dict[Bounds, dict[str, Any]] = {}
        #: purged panes the handler restored: events may enter them again
        self._reopened: set[Bounds] = set()
        #: purged panes whose states the handler stored (until they expire: :meth:`expire`)
        self._closed: set[Bounds] = set()
        self.counters = {"events": 0, "duplicates": 0, "late_updates": 0, "reopened": 0, "dropped_late": 0}

    # --- input -----------------------------------------------------------------------------
    def closed(self, event: Event) -> list[Bounds]:
        """The purged panes ``event`` belongs to whose states were stored: the handler loads them
        and passes them to :meth:`reopen` before :meth:`add` (tumbling and hopping)."""
        if self._wm is None or self._session:
            return []
        return [b for b in self.query.window.assign(event.time) if b in self._closed and b not in self._panes]

    def reopen(self, bounds: Bounds, state: Mapping[str, Any] | None) -> None:
        """Bring a purged pane back (``state`` from :meth:`take_panes`; ``None``: none was stored)."""
        if bounds in self._panes or self._session:
            return
        if bounds in self._archived:  # purged but not taken yet: this engine's copy is the newest
            state = self._archived.pop(bounds)
        self._reopened.add(bounds)
        self._closed.discard(bounds)
        if state is None:
            return
        self._pane_rev[bounds] = max(self._pane_rev.get(bounds, 0), int(state.get("revision", 0)))
        for raw in state["windows"]:
            if (bounds[0], bounds[1], raw["group"]) not in self._wins:
                self._restore(raw)
        self.counters["reopened"] += 1

    def _horizon(self) -> int | None:
        """Panes ending before this (the newest event time less ``keep_closed``) are forgotten."""
        return max(self._high.values()) - self.keep_closed_ms if self._high else None

    def expire(self) -> list[Bounds]:
        """Stored panes older than ``keep_closed`` (behind the newest event): the handler deletes
        them; an event for one of them later is counted in ``dropped_late``."""
        horizon = self._horizon()
        if horizon is None:
            return []
        gone = sorted(b for b in self._closed if b[1] <= horizon)
        self._closed.difference_update(gone)
        return gone

    def add(self, shard: str, event: Event) -> None:
        """Count ``event`` (read on ``shard``) into its windows; call :meth:`advance` after."""
        self._seen_shards.add(shard)
        self._active.add(shard)
        self._high[shard] = max(self._high.get(shard, event.time), event.time)
        wm = self.watermark()
        if self._session:
            assert isinstance(self.query.window, Session)
            self._add_session(event, wm, self.query.window.gap)
            return
        lateness = self.query.lateness_ms
        for start, end in self.query.window.assign(event.time):
            key = (start, end, event.group)
            w = self._wins.get(key)
            if w is None:
                bounds = (start, end)
                if wm is not None and end + lateness <= wm and bounds not in self._reopened:
                    horizon = self._horizon()
                    if (
                        bounds in self._closed
                        or self._archived.get(bounds)
                        or (horizon is not None and end <= horizon)
                    ):
                        self.counters["dropped_late"] += 1  # not reopened, or forgotten (keep_closed)
                        continue
                    self._reopened.add(bounds)  # never had an event: it starts empty
                w = self._create(start, end, event.group)
            self._apply(w, event, wm)

    def progress(self, shard: str, time_ms: int) -> None:
        """``shard`` will bring no event older than ``time_ms`` (beyond ``out_of_orderness``): a
        Lambda processing window closed for it. Raises its ``high`` without an event."""
        self._seen_shards.add(shard)
        self._active.add(shard)
        self._high[shard] = max(self._high.get(shard, time_ms), time_ms)

    def _create(self, start: int, end: int, group: str | None) -> _Win:
        w = _Win(start, end, group, [a.new() for a in self.query.aggregates])
        self._wins[w.key] = w
        if not self._session:
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
        aggs = self.query.aggregates
        w.seen[event.key] = [a.dump_value(v) for a, v in zip(aggs, event.values, strict=True)]
        for agg, acc, value in zip(aggs, w.accs, event.values, strict=True):
            agg.add(acc, value)
        w.dirty = True
        self.counters["events"] += 1
        if self.parts and not self._session:
            self._changed.add((w.start, w.end))
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
                w.seen.update(other.seen)
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
        """``shard`` delivered CONTROL ``COMPLETED``: QLDB wrote everything; the input has ended."""
        self._seen_shards.add(shard)
        self._active.add(shard)
        self._completed.add(shard)
        self._ended = True

    def release(self, shard: str) -> None:
        """The runtime gave ``shard`` up (ended or lease lost): it no longer holds the watermark."""
        self._active.discard(shard)

    # --- the watermark ---------------------------------------------------------------------
    def watermark(self) -> int | None:
        """The current watermark (``None``: no window may fire yet). Never decreases."""
        limiting = [self._high[s] for s in self._active if s in self._high]
        candidate: int | None = None
        if self._ended:
            candidate = END_OF_INPUT
        elif len(self._seen_shards) < self.min_shards:
            candidate = None  # a shard not seen yet may still bring early events
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
        self._ended = True
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
        if self._session:
            for w in sorted(emit, key=lambda w: (w.start, w.end, _gsort(w.group))):
                out.extend(self._emit_session(w, wm))
            for w in due.values():
                if w.end + lateness <= wm:
                    self._purge_session(w)
            return out
        by_bounds: dict[Bounds, list[_Win]] = {}
        for w in emit:
            by_bounds.setdefault((w.start, w.end), []).append(w)
        for bounds in sorted(by_bounds):
            out.append(self._emit_pane(bounds, by_bounds[bounds], wm))
        for bounds in sorted({(w.start, w.end) for w in due.values() if w.end + lateness <= wm}):
            self._purge_pane(bounds)
        return out

    def _mark(self, w: _Win, wm: int) -> bool:
        updated = w.dirty
        if w.dirty:
            w.revision += 1
            w.dirty = False
        final = w.end + self.query.lateness_ms <= wm
        if final != w.final and self.parts and not self._session:
            self._changed.add((w.start, w.end))
        w.final = final
        return updated

    def _result(self, w: _Win) -> WindowResult:
        values = {a.name: a.result(acc) for a, acc in zip(self.query.aggregates, w.accs, strict=True)}
        return WindowResult(self.query.name, w.start, w.end, w.group, w.revision, w.final, values, self.shard)

    def _emit_pane(self, bounds: Bounds, changed: list[_Win], wm: int) -> Pane:
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
