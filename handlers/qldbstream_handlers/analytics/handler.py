"""The analytics handler: keyed event-time windows over verified revisions, results to sinks.

Lifecycle (see :mod:`qldbstream.handler`):

1. ``setup`` builds the sinks and the state store and loads the saved window state.
2. ``handle_batch`` turns each revision into events of the matching queries, record by record:
   the event is counted into its windows, then every window the watermark has passed is emitted
   into the *outbox* (pure, in memory). CONTROL ``COMPLETED`` ends the shard's input.
3. ``flush`` - before the runtime's checkpoint - (a) writes the outbox to every sink, idempotently,
   then (b) saves the window state. If either raises, the checkpoint does not move: the records are
   delivered again, the windows skip the events they already hold, and the same results are
   written again under the same keys.
4. ``shard_released`` takes the shard out of the watermark (``scope = stream``) or drops its
   windows from memory (``scope = shard``; the next owner loads them from the state store).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qldbstream.decode import ControlRecord, JournalRecord, RevisionDetails
from qldbstream.errors import ConfigurationError, PoisonRecordError
from qldbstream.handler import BatchItemError, Handler, HandlerContext, SetupContext
from qldbstream.metrics import Metrics, NullMetrics
from qldbstream_handlers.analytics.engine import WindowEngine
from qldbstream_handlers.analytics.query import Query
from qldbstream_handlers.analytics.results import Emission, Pane, Retraction
from qldbstream_handlers.analytics.settings import AnalyticsConfig, AnalyticsOptions, parse_settings
from qldbstream_handlers.analytics.sinks import ResultSink
from qldbstream_handlers.analytics.state import InMemoryStateStore, StateStore, decode_state, encode_state

__all__ = ["AnalyticsHandler"]

log = logging.getLogger("qldbstream.handler.analytics")
_StateKey = str | None  # None: the one state of scope = stream; else a shard id


class AnalyticsHandler(Handler):
    """Windows and aggregates over the stream. ``AnalyticsHandler(settings)`` is the plugin form;
    the Python API passes ``queries``, ``sinks`` and ``state`` instead::

        AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[DynamoDBSink(client, "velocity")])
    """

    name = "analytics"

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
        self.sinks: list[ResultSink] | None = list(sinks) if sinks is not None else None
        self.state_store = state
        self._clients = clients
        self.metrics: Metrics = NullMetrics()
        self._engines: dict[_StateKey, dict[str, WindowEngine]] = {}
        self._outbox: dict[tuple[str, str, int, int, str | None], Emission] = {}
        self._dirty: set[_StateKey] = set()
        self._reported: dict[tuple[_StateKey, str], dict[str, int]] = {}

    # --- set-up ----------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        if self._clients is not None:
            return self._clients(service)
        import boto3

        cfg = self.config
        return boto3.client(
            service,  # type: ignore[call-overload]
            region_name=cfg.region if cfg else None,
            endpoint_url=cfg.endpoint_url if cfg else None,
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
        if self.options.scope == "stream":
            self._engines_for(None)

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
                q, watermark=o.watermark, min_shards=o.min_shards if key is None else 1, shard=key
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

    # --- records ---------------------------------------------------------------------------
    def wants(self, record: JournalRecord) -> bool:
        if isinstance(record, RevisionDetails):
            return any(q.matches(record) for q in self.queries)
        return isinstance(record, ControlRecord)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        shard = ctx.shard_id or "-"
        key: _StateKey = None if self.options.scope == "stream" else shard
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
                        if event is not None:
                            engines[name].add(shard, event)
                self._dirty.add(key)
                for engine in engines.values():
                    self._collect(engine.advance())
        finally:
            self._report(key, engines)

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

    # --- persistence -----------------------------------------------------------------------
    def flush(self, ctx: HandlerContext) -> None:
        self._persist()

    def _persist(self) -> None:
        """1. write the outbox to every sink (idempotent), 2. save the changed window state."""
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
        for key in sorted(self._dirty, key=lambda k: k or ""):
            engines = self._engines.get(key)
            if engines is not None:
                state = {"version": 1, "queries": {n: e.to_state() for n, e in engines.items()}}
                self.state_store.save(self._state_name(key), encode_state(state))
        self._dirty.clear()

    def drain(self) -> None:
        """End of input: fire and purge every window, write the results, save the (empty) state."""
        for key, engines in self._engines.items():
            for engine in engines.values():
                self._collect(engine.drain())
            self._dirty.add(key)
        self._persist()

    def shard_released(self, shard_id: str) -> None:
        if self.options.scope == "shard":
            if shard_id in self._engines:
                self._try_persist()
                self._engines.pop(shard_id, None)
            return
        engines = self._engines.get(None)
        if engines is None:
            return
        for engine in engines.values():
            engine.release(shard_id)
            self._collect(engine.advance())
        self._dirty.add(None)
        self._try_persist()

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
