"""The analytics handler's results and state going out: the outbox to the sinks, the windows that
left memory (archives, and in ``scope = shard`` each shard's *part*, with the union of every
shard's part written to the sinks), and the engines' state.

:class:`Persistence` is a base of :class:`~qldbstream_handlers.analytics.handler.AnalyticsHandler`;
the module docstring of :mod:`~qldbstream_handlers.analytics.handler` explains the order of
``flush`` and ``scope = shard``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from qldbstream.api import Metrics
from qldbstream_handlers.analytics.engine import Bounds, WindowEngine, merge_parts
from qldbstream_handlers.analytics.query import Query
from qldbstream_handlers.analytics.results import Emission, Pane, Retraction
from qldbstream_handlers.analytics.sinks import ResultSink
from qldbstream_handlers.analytics.state import StateStore, decode_state, encode_state

__all__ = ["Persistence"]

log = logging.getLogger("qldbstream.handler.analytics")
_StateKey = str | None  # None: the one state of scope = stream; else a shard id
#: (state key, query, bounds): a pane state waiting to be stored
_PaneKey = tuple[_StateKey, str, Bounds]
#: pane states kept in memory after they were stored (a late event reopens them without a read)
_PANE_CACHE = 16
#: how often a shard reads the members again when other shards keep changing a window
_MERGE_ROUNDS = 5


class Persistence:
    """Stores panes, writes results and saves state; the handler provides the engines and outbox."""

    name: str
    queries: tuple[Query, ...]
    sinks: list[ResultSink] | None
    state_store: StateStore | None
    metrics: Metrics
    _engines: dict[_StateKey, dict[str, WindowEngine]]
    _outbox: dict[tuple[str, str, int, int, str | None], Emission]
    _dirty: set[_StateKey]
    _pane_out: dict[_PaneKey, dict[str, Any]]
    _pane_cache: OrderedDict[str, dict[str, Any]]

    if TYPE_CHECKING:

        def _build(self) -> None: ...

        def _state_name(self, key: _StateKey) -> str: ...

    def _take_panes(self) -> None:
        """Move the engines' pane states to store (once per flush: a pane is serialised once)."""
        for key, engines in self._engines.items():
            for name, engine in engines.items():
                for bounds, state in engine.take_panes().items():
                    pane_key = (key, name, bounds)
                    self._pane_out[pane_key] = state
                    if not engine.is_open(bounds):  # what a late event may have to load back
                        self._cache(self._pane_name(*pane_key), state)

    # --- windows that left memory: archives, and each shard's part in scope = shard ----------
    def _pane_name(self, key: _StateKey, query: str, bounds: Bounds) -> str:
        return f"{self._state_name(key)}#pane#{query}#{bounds[0]}#{bounds[1]}"

    def _members_group(self, query: str, bounds: Bounds) -> str:
        return f"{self.name}#{query}#{bounds[0]}#{bounds[1]}"

    def _cache(self, name: str, state: dict[str, Any]) -> None:
        self._pane_cache[name] = state
        self._pane_cache.move_to_end(name)
        while len(self._pane_cache) > _PANE_CACHE:
            self._pane_cache.popitem(last=False)

    def _stored_pane(self, key: _StateKey, query: str, bounds: Bounds) -> dict[str, Any] | None:
        """This consumer's last state of a pane that left memory (``None``: it never had one)."""
        pending = self._pane_out.get((key, query, bounds))
        if pending is not None:
            return pending
        name = self._pane_name(key, query, bounds)
        cached = self._pane_cache.get(name)
        if cached is not None:
            return cached
        assert self.state_store is not None
        blob = self.state_store.load(name)
        return None if blob is None else decode_state(blob)

    # --- persistence -----------------------------------------------------------------------
    def _persist(self) -> None:
        """1. write the outbox to every sink (idempotent), 2. store the panes that changed (and in
        scope = shard write the union of every shard's part to the sinks), 3. save the changed
        window state."""
        if self.sinks is None or self.state_store is None:
            self._build()
        assert self.sinks is not None and self.state_store is not None
        if self._outbox:
            panes = [e for e in self._outbox.values() if isinstance(e, Pane)]
            retractions = [e for e in self._outbox.values() if isinstance(e, Retraction)]
            for sink in self.sinks:
                sink.write(panes, retractions)
            self.metrics.incr("analytics_results_written", sum(len(p.changed) for p in panes))
            self._outbox.clear()
        self._take_panes()
        for pane_key in sorted(self._pane_out, key=lambda k: (k[0] or "", k[1], k[2])):
            state = self._pane_out[pane_key]
            key, query, bounds = pane_key
            self.state_store.save(self._pane_name(*pane_key), encode_state(state))
            if key is not None:
                self.state_store.set_member(self._members_group(query, bounds), key, int(state["revision"]))
                self._write_union(pane_key, state)
            del self._pane_out[pane_key]
        expired: list[str] = []
        for key, by_query in self._engines.items():
            for name, engine in by_query.items():
                for bounds in engine.expire():  # older than keep_closed: forgotten
                    expired.append(self._pane_name(key, name, bounds))
                    self._dirty.add(key)
        for key in sorted(self._dirty, key=lambda k: k or ""):
            engines = self._engines.get(key)
            if engines is not None:
                state = {"version": 2, "queries": {n: e.to_state() for n, e in engines.items()}}
                self.state_store.save(self._state_name(key), encode_state(state))
        self._dirty.clear()
        for pane_name in expired:  # after the state that no longer lists them (a crash leaves garbage)
            self.state_store.delete(pane_name)
            self._pane_cache.pop(pane_name, None)

    def _write_union(self, pane_key: _PaneKey, own: dict[str, Any]) -> None:
        """Write the union of every shard's part of one window; read the members again after and
        repeat while another shard changed its part meanwhile (the last writer writes it all)."""
        assert self.sinks is not None and self.state_store is not None
        own_key, query_name, bounds = pane_key
        query = next(q for q in self.queries if q.name == query_name)
        group = self._members_group(query_name, bounds)
        members = self.state_store.members(group)
        for _ in range(_MERGE_ROUNDS):
            parts: dict[str, dict[str, Any]] = {}
            for member in sorted(members):
                if member == own_key:
                    parts[member] = own
                    continue
                blob = self.state_store.read(self._pane_name(member, query_name, bounds))
                if blob is not None:
                    parts[member] = decode_state(blob)
            if set(parts) != set(members):  # a shard's part expired (keep_closed): a union would shrink
                log.warning(
                    "analytics: window %s %s..%s: the parts of %s are gone (older than keep_closed); "
                    "its result is left as it is",
                    query_name,
                    bounds[0],
                    bounds[1],
                    sorted(set(members) - set(parts)),
                )
                return
            pane = merge_parts(query, bounds, list(parts.values()))
            for sink in self.sinks:
                sink.write([pane], [])
            self.metrics.incr("analytics_results_written", len(pane.changed))
            used = {m: int(p["revision"]) for m, p in parts.items()}
            members = self.state_store.members(group)
            if all(used.get(m, -1) >= r for m, r in members.items()):
                return
        log.warning(
            "analytics: window %s %s..%s keeps changing on other shards; their flushes write the union",
            query_name,
            bounds[0],
            bounds[1],
        )
