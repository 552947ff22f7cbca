"""The analytics handler: keyed event-time windows over verified revisions, results to sinks.

Lifecycle (see :mod:`qldbstream.api.handler`):

1. ``setup`` builds the sinks and the state store and loads the saved window state.
2. ``handle_batch`` turns each revision into events of the matching queries, record by record:
   the event is counted into its windows (a window that already left memory is loaded back from
   the state store first: nothing is dropped), then every window the watermark has passed is
   emitted into the *outbox* (pure, in memory). CONTROL ``COMPLETED`` ends the input.
3. ``flush`` - before the runtime's checkpoint - (a) writes the outbox to every sink, idempotently,
   (b) stores the windows that left memory, then (c) saves the window state. If any step raises,
   the checkpoint does not move: the records are delivered again, the windows skip the events
   they already hold, and the same results are written again under the same keys.
4. ``shard_released`` takes the shard out of the watermark (``scope = stream``) or drops its
   windows from memory (``scope = shard``; the next owner loads them from the state store).
5. ``window_closed`` (AWS Lambda tumbling windows, ``isFinalInvokeForWindow``): the shard has
   delivered every record that reached Kinesis before the processing window's end, so that end
   is the shard's progress: windows it passes fire, and the results are written at once.

**scope = shard** (several consumers: Lambda, several KCL workers). Each shard keeps its own
windows; every flush stores the shard's *part* of each window it changed (its events, with a
revision) and registers it in the window's members index; then it reads every shard's part of that
window and writes the *union* to the sinks - one result per window and group, exact (each event
counted once, distinct values united), with revision = the sum of the parts' revisions, so a
result from fewer or older parts never overwrites a newer one. It reads the members again after
writing and repeats if another shard's part changed meanwhile, so the last writer always writes
the union of every part. Results are therefore written at every flush that changes a window (not
only when it fires): the last windows of a bounded stream are written even though only one shard
reads CONTROL ``COMPLETED`` and an idle shard is never invoked again. ``final`` says every part
is final (each shard's watermark, COMPLETED on that shard, or a Lambda processing window closing
after the window's end). Session windows stay per shard (their results carry the shard).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qldbstream.api import (
    BatchItemError,
    ConfigurationError,
    ControlRecord,
    Handler,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    PoisonRecordError,
    RevisionDetails,
    SetupContext,
)
from qldbstream_handlers.analytics.engine import WindowEngine
from qldbstream_handlers.analytics.persistence import Persistence, _PaneKey, _StateKey
from qldbstream_handlers.analytics.query import Query
from qldbstream_handlers.analytics.results import Emission, Pane
from qldbstream_handlers.analytics.settings import AnalyticsConfig, AnalyticsOptions, parse_settings
from qldbstream_handlers.analytics.sinks import ResultSink
from qldbstream_handlers.analytics.state import (
    InMemoryStateStore,
    StateStore,
    decode_state,
)
from qldbstream_handlers.analytics.windows import Session
from qldbstream_handlers.times import window_time_ms

__all__ = ["AnalyticsHandler"]

log = logging.getLogger("qldbstream.handler.analytics")


class AnalyticsHandler(Persistence, Handler):
    """Windows and aggregates over the stream. ``AnalyticsHandler(settings)`` is the plugin form;
    the Python API passes ``queries``, ``sinks`` and ``state`` instead::

        AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[DynamoDBSink(client, "velocity")])

    Not a :class:`~qldbstream.api.Router`: every record feeds the window engines of the queries it
    matches and the results are emitted per batch (and on CONTROL), so it routes by query, itself.
    """

    name = "analytics"
    #: every revision counts in event time: an older version arriving after a newer one too
    late_policy = "deliver-late"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        queries: Sequence[Query] | None = None,
        sinks: Sequence[ResultSink] | None = None,
        state: StateStore | None = None,
        options: AnalyticsOptions | None = None,
        clients: Callable[[str], Any] | None = None,
    ) -> None:
        self.config: AnalyticsConfig | None = None
        if queries is None:
            self.config = parse_settings(settings or {})
            queries, options = (self.config.query,), self.config.options
        elif settings:
            raise ConfigurationError("analytics: give settings or queries, not both")
        names = [q.name for q in queries]
        if not names or len(set(names)) != len(names):
            raise ConfigurationError(f"analytics: queries need unique names, got {names}")
        self.queries = tuple(queries)
        self.options = options or AnalyticsOptions()
        #: ``stream`` or ``shard`` (``auto`` resolved once, here)
        self.scope = self.options.resolved_scope()
        self.sinks: list[ResultSink] | None = list(sinks) if sinks is not None else None
        self.state_store = state
        self._clients = clients
        self.metrics: Metrics = NullMetrics()
        self._engines: dict[_StateKey, dict[str, WindowEngine]] = {}
        self._outbox: dict[tuple[str, str, int, int, str | None], Emission] = {}
        self._dirty: set[_StateKey] = set()
        self._reported: dict[tuple[_StateKey, str], dict[str, int]] = {}
        #: pane states to store in the next flush (archives; parts in scope = shard)
        self._pane_out: dict[_PaneKey, dict[str, Any]] = {}
        #: pane states recently stored, by storage key
        self._pane_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # --- set-up ----------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        if self._clients is not None:
            return self._clients(service)
        from qldbstream.api.aws import aws_client

        cfg = self.config
        return aws_client(
            service, region_name=cfg.region if cfg else None, endpoint_url=cfg.endpoint_url if cfg else None
        )

    def _build(self) -> None:
        cfg = self.config
        if self.sinks is None:
            self.sinks = [] if cfg is None else [self._sink(name, cfg) for name in cfg.sinks]
        if self.state_store is None:
            if cfg is not None and cfg.state.startswith("dynamodb:"):
                from qldbstream_handlers.analytics.state import DynamoDBStateStore

                self.state_store = DynamoDBStateStore(self._client("dynamodb"), cfg.state[9:])
            else:
                self.state_store = InMemoryStateStore()

    def _sink(self, name: str, cfg: AnalyticsConfig) -> ResultSink:
        aggregates = {q.name: q.aggregates for q in self.queries}
        if name == "emf":
            from qldbstream_handlers.analytics.sinks import EmfSink

            groups = {q.name: q.group_by for q in self.queries}
            return EmfSink(aggregates, groups, namespace=cfg.emf_namespace, path=cfg.emf_path)
        if name == "dynamodb":
            from qldbstream_handlers.analytics.dynamodb_sink import DynamoDBSink

            assert cfg.dynamodb_table is not None
            return DynamoDBSink(self._client("dynamodb"), cfg.dynamodb_table)
        from qldbstream_handlers.analytics.parquet_sink import ParquetSink
        from qldbstream_handlers.export.storage import open_storage

        assert cfg.parquet_path is not None
        storage = open_storage(
            cfg.parquet_path, client=self._client("s3") if "://" in cfg.parquet_path else None
        )
        return ParquetSink(storage, aggregates, compression=cfg.parquet_compression, scale=cfg.decimal_scale)

    def setup(self, ctx: SetupContext) -> None:
        self.metrics = ctx.metrics
        self._build()
        if self.scope == "stream":
            self._engines_for(None)
        elif isinstance(self.state_store, InMemoryStateStore) and self.config is not None:
            log.warning(
                "analytics: scope = shard with state = memory unites only the shards this process "
                "reads; with several consumers (Lambda, KCL workers) use state = dynamodb:<table>"
            )

    def _state_name(self, key: _StateKey) -> str:
        return self.name if key is None else f"{self.name}#{key}"

    def _engines_for(self, key: _StateKey) -> dict[str, WindowEngine]:
        engines = self._engines.get(key)
        if engines is not None:
            return engines
        if self.state_store is None:
            self._build()
        assert self.state_store is not None
        o = self.options
        engines = {
            q.name: WindowEngine(
                q,
                watermark=o.watermark,
                min_shards=o.min_shards if key is None else 1,
                shard=key if self._per_shard_results(q) else None,
                parts=key is not None and not self._per_shard_results(q),
                keep_closed_ms=o.keep_closed_ms,
            )
            for q in self.queries
        }
        blob = self.state_store.load(self._state_name(key))
        if blob is not None:
            saved = decode_state(blob)["queries"]
            for name, engine in engines.items():
                if name in saved:
                    try:
                        engine.load_state(saved[name])
                    except ValueError as exc:
                        raise ConfigurationError(
                            f"analytics: {exc}; clear the state or rename the query"
                        ) from None
            log.info("analytics state %s restored", self._state_name(key))
        for name, engine in engines.items():  # metrics report what happens from here on
            self._reported[(key, name)] = dict(engine.counters)
        self._engines[key] = engines
        return engines

    def _per_shard_results(self, query: Query) -> bool:
        """Session windows in scope = shard: results per shard (sessions cannot be united by key)."""
        return self.scope == "shard" and isinstance(query.window, Session)

    # --- records ---------------------------------------------------------------------------
    def wants(self, record: JournalRecord) -> bool:
        if isinstance(record, RevisionDetails):
            return any(q.matches(record) for q in self.queries)
        return isinstance(record, ControlRecord)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "-"
        key: _StateKey = None if self.scope == "stream" else shard
        engines = self._engines_for(key)
        try:
            for i, record in enumerate(records):
                if isinstance(record, ControlRecord):
                    if record.control_record_type != "COMPLETED":
                        continue
                    for engine in engines.values():
                        engine.complete(shard)
                elif isinstance(record, RevisionDetails):
                    try:
                        events = [(q.name, q.event(record)) for q in self.queries if q.matches(record)]
                    except PoisonRecordError as exc:
                        raise BatchItemError(i, exc, self.name) from exc
                    for name, event in events:
                        if event is None:
                            continue
                        engine = engines[name]
                        for bounds in engine.closed(event):
                            engine.reopen(bounds, self._stored_pane(key, name, bounds))
                        engine.add(shard, event)
                self._dirty.add(key)
                self._advance(key, engines)
        finally:
            self._report(key, engines)

    def _advance(self, key: _StateKey, engines: Mapping[str, WindowEngine]) -> None:
        for engine in engines.values():
            emissions = engine.advance()
            if not engine.parts:  # in scope = shard, tumbling and hopping results are unions
                self._collect(emissions)

    def _collect(self, emissions: list[Emission]) -> None:
        for e in emissions:
            previous = self._outbox.pop(e.key, None)
            if isinstance(e, Pane) and isinstance(previous, Pane):
                e = Pane(
                    e.query,
                    e.window_start,
                    e.window_end,
                    e.session,
                    e.rows,
                    e.changed | previous.changed,
                    e.updated | previous.updated,
                    e.shard,
                )
            self._outbox[e.key] = e

    def _report(self, key: _StateKey, engines: dict[str, WindowEngine]) -> None:
        for name, engine in engines.items():
            last = self._reported[(key, name)]
            for counter, value in engine.counters.items():
                if value != last.get(counter, 0):
                    self.metrics.incr(f"analytics_{counter}", value - last.get(counter, 0), query=name)
                    last[counter] = value
            self.metrics.gauge("analytics_open_windows", engine.open_windows, query=name)

    # --- flush and the ends of input (what is written: :mod:`.persistence`) -------------------
    def flush(self, ctx: HandlerContext) -> None:
        self._persist()

    def drain(self) -> None:
        """End of input: fire and purge every window, write the results, save the (empty) state."""
        for key, engines in self._engines.items():
            for engine in engines.values():
                emissions = engine.drain()
                if not engine.parts:
                    self._collect(emissions)
            self._advance(key, engines)
            self._dirty.add(key)
        self._persist()

    def shard_released(self, shard_id: str) -> None:
        if self.scope == "shard":
            if shard_id in self._engines:
                self._try_persist()
                self._engines.pop(shard_id, None)
            return
        engines = self._engines.get(None)
        if engines is None:
            return
        for engine in engines.values():
            engine.release(shard_id)
        self._advance(None, engines)
        self._dirty.add(None)
        self._try_persist()

    def window_closed(self, window: Any, ctx: HandlerContext) -> None:
        """AWS Lambda closed a tumbling (processing-time) window of ``window.shard_id``: every record
        that reached that shard before ``window.end`` has been delivered, so no event older than
        that (less ``out_of_orderness``, which covers QLDB's publishing delay) will come from it.
        Windows this passes fire, and everything is written now (the hook runs after the
        invocation's flush; Lambda retries the final invocation if this raises)."""
        if not getattr(window, "final", False):
            return  # terminated early (state over 1 MB): the window goes on
        shard = getattr(window, "shard_id", None) or ctx.shard_id or "-"
        end = window_time_ms(getattr(window, "end", None))
        key: _StateKey = None if self.scope == "stream" else shard
        engines = self._engines_for(key)
        if end is not None:
            for engine in engines.values():
                engine.progress(shard, end)
        self._advance(key, engines)
        self._dirty.add(key)
        self._report(key, engines)
        self._persist()

    def _try_persist(self) -> None:
        """Outside ``flush`` nothing can hold a checkpoint back: log a failure (results are rewritten
        from the saved state when the stream moves again) rather than raise."""
        try:
            self._persist()
        except Exception:
            log.exception("analytics: writing results or state after a shard release failed")

    def close(self) -> None:
        for sink in self.sinks or ():
            try:
                sink.close()
            except Exception:
                log.exception("analytics: closing sink %s failed", sink.name)
