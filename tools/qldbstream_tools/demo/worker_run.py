"""The demo's worker run on the local AWS: the app and its handlers from the demo's environment,
the standalone worker until caught up, then the bounded run's end (what waits for the watermark
is evaluated and published), with logs routed to the demo's JSON log file; :class:`_Run` is what
it leaves behind for the read-back and the report."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.demo.aws import DemoResources
from qldbstream_tools.demo.collect import BatchRecorder, RouteRecorder
from qldbstream_tools.demo.options import DemoNames, DemoOptions, worker_environ
from qldbstream_tools.demo.progress import Progress, _Observer
from qldbstream_tools.demo.scrape import MetricsEndpoint, Scrape, TeeMetrics

if TYPE_CHECKING:
    from qldbstream_handlers.fraud import Alert

    from qldbstream.app.assembly import App
    from qldbstream.runtimes.worker import WorkerReport

#: nothing public: :mod:`~qldbstream_tools.demo.runner` runs it, the report reads its ``_Run``
__all__: list[str] = []


def _route_logs(path: Path) -> logging.Handler:
    """Replace the stderr handler ``App.from_env`` installed with a JSON file handler."""
    from qldbstream.io.logs import JsonFormatter

    logger = logging.getLogger("qldbstream")
    for existing in list(logger.handlers):
        if getattr(existing, "_qldbstream", False):
            logger.removeHandler(existing)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    return handler


@contextmanager
def _saved_logging() -> Iterator[None]:
    """Put the ``qldbstream`` logger back as it was (``App.from_env`` configures it for a process)."""
    logger = logging.getLogger("qldbstream")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        yield
    finally:
        for handler in logger.handlers:
            if handler not in saved[1]:
                handler.close()
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


@dataclass
class _Run:
    """What the worker run left behind, for the read-back and the report."""

    report: WorkerReport
    tally: dict[str, dict[str, int]]
    metrics: TeeMetrics
    scrapes: list[Scrape]
    metrics_url: str
    observer: _Observer
    recorder: RouteRecorder
    bus_alerts: list[Alert]
    batches: BatchRecorder


def _handlers(app: App) -> dict[str, Any]:
    try:
        from qldbstream_handlers.analytics import AnalyticsHandler
        from qldbstream_handlers.fraud import FraudHandler
        from qldbstream_handlers.workflow import WorkflowHandler
    except ImportError:  # pragma: no cover - make demo installs them
        raise ConfigurationError("the demo needs the built-in handlers: pip install -e ./handlers") from None
    by_name = {h.name: h for h in app.handlers}
    for name, kind in (
        ("fraud", FraudHandler),
        ("analytics", AnalyticsHandler),
        ("workflow", WorkflowHandler),
    ):
        if not isinstance(by_name.get(name), kind):
            raise ConfigurationError(f"the demo's {name} handler is not the built-in one")
    return by_name


def _run_worker(
    options: DemoOptions,
    names: DemoNames,
    resources: DemoResources,
    progress: Progress | None,
    started: float,
    put: dict[str, int],
) -> _Run:
    from qldbstream_handlers.fraud import default_bus

    from qldbstream.api.handler import HandlerContext
    from qldbstream.app.assembly import App
    from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
    from qldbstream.runtimes.worker import Worker, WorkerOptions

    environ = worker_environ(
        names,
        shards=options.shards,
        alert_queue_url=resources.alert_queue_url,
        security_topic_arn=resources.security_topic_arn,
    )
    endpoint = MetricsEndpoint.start()
    bus_alerts: list[Alert] = []
    unsubscribe = default_bus.subscribe(bus_alerts.append)
    try:
        with _saved_logging():
            app = App.from_env(environ=environ, metrics=endpoint.metrics)
            _route_logs(names.log_file)
            try:
                handlers = _handlers(app)
                interpreter = handlers["workflow"].interpreter
                assert interpreter is not None  # local mode
                recorder = RouteRecorder(interpreter)
                store = DynamoDBCheckpointStore(app.client("dynamodb"), app.settings.checkpoint_table)
                worker_options = WorkerOptions.from_settings(
                    app.settings, poll_interval=options.poll_interval
                )
                worker = Worker.from_app(app, store, options=worker_options)
                batches = BatchRecorder(worker.pipeline)
                observer = _Observer(worker.status, endpoint, options.scrape_interval, progress, started, put)
                worker.on_progress = observer
                report = worker.run(until_caught_up=True)
                if progress is not None:
                    progress(observer.snapshot("evaluating what waits for the watermark"))
                # A bounded run ends here: evaluate what still waits for the watermark and publish it
                # (fraud windows, the last velocity windows), as a shutdown of a bounded export would.
                fraud = handlers["fraud"]
                fraud.drain()
                fraud.flush(HandlerContext("fraud", None, metrics=app.metrics))
                handlers["analytics"].drain()
                endpoint.scrape("final")
                tally = worker.pipeline.verifier.tally.as_dict()
            finally:
                app.close()
    finally:
        unsubscribe()
        endpoint.stop()
    return _Run(
        report,
        tally,
        endpoint.metrics,
        endpoint.scrapes,
        endpoint.url,
        observer,
        recorder,
        bus_alerts,
        batches,
    )
