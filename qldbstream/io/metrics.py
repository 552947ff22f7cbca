"""The metrics backends, one per runtime, behind the facade in :mod:`qldbstream.api.metrics`.

The runtime picks the backend from the ``metrics`` setting:

==================  ===========================================================================
``none``            :class:`NullMetrics` (the default)
``emf``             :class:`EmfMetrics`: CloudWatch Embedded Metric Format, one JSON document
                    per flush on stdout (Lambda sends stdout to CloudWatch Logs, which turns
                    the documents into metrics; no API calls, no extra latency)
``prometheus:PORT`` :class:`PrometheusMetrics`: a ``/metrics`` endpoint on 127.0.0.1:PORT
                    (standalone worker, KCL). Under the KCL each shard's processor is its own
                    process: they write to a shared ``PROMETHEUS_MULTIPROC_DIR`` and the
                    ``qldbstream kcl`` launcher serves the aggregated endpoint.
==================  ===========================================================================

Metric names (documented in docs/operations.md): ``records_in`` (stage), ``records_verified``
(record_type), ``verification_failures`` (check), ``decode_errors``, ``dedupe_hits``,
``late_revisions`` (action), ``dlq_writes`` (stage), ``dlq_write_failures``, ``retries``,
``breaker_open`` (gauge), ``breaker_rejections``, ``batch_size``, ``handler_latency``
(seconds), ``stream_lag_ms`` (MillisBehindLatest) and ``iterator_age_ms`` (now minus the
newest record's approximateArrivalTimestamp).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import IO, Any

from qldbstream.api.metrics import NAMESPACE, InMemoryMetrics, Metrics, NullMetrics

__all__ = ["BLANK_DIMENSION", "EmfMetrics", "PrometheusMetrics", "build_metrics"]

_Spec = dict[str, tuple[str, str, tuple[str, ...]]]  # name -> (EMF unit, description, labels)
_COUNTERS: _Spec = {
    "records_in": ("Count", "Records entering a stage", ("stage",)),
    "records_verified": ("Count", "Journal records verified", ("record_type",)),
    "verification_failures": ("Count", "Failed verification checks", ("check",)),
    "decode_errors": ("Count", "Records that could not be decoded", ("error",)),
    "dedupe_hits": ("Count", "Duplicate deliveries skipped", ("handler",)),
    "late_revisions": ("Count", "Revisions older than one already delivered", ("handler", "action")),
    "dlq_writes": ("Count", "Records dead-lettered", ("stage", "handler")),
    "dlq_write_failures": ("Count", "Dead-letter writes that failed", ()),
    "retries": ("Count", "Handler retries", ("handler",)),
    "breaker_rejections": ("Count", "Calls refused by an open circuit breaker", ("handler",)),
}
_GAUGES: _Spec = {
    "breaker_open": ("None", "1 when the handler's circuit breaker is open", ("handler",)),
    "stream_lag_ms": ("Milliseconds", "MillisBehindLatest of the last GetRecords", ("shard",)),
    "iterator_age_ms": ("Milliseconds", "Age of the newest record processed", ("shard",)),
}
_HISTOGRAMS: _Spec = {
    "batch_size": ("Count", "Kinesis records per batch", ("shard",)),
    "handler_latency": ("Seconds", "Seconds per handler call", ("handler",)),
}


#: What an EMF dimension holds when the value is blank (CloudWatch rejects empty values): the
#: dimension is kept, so every metric keeps one dimension set (dashboards and alarms search by it)
BLANK_DIMENSION = "none"
#: CloudWatch's longest dimension value
MAX_DIMENSION_CHARS = 1024


def _emf_dimensions(dimensions: dict[str, Any]) -> dict[str, str]:
    """Dimension values CloudWatch accepts: a string, not blank, at most 1024 characters."""
    out: dict[str, str] = {}
    for name, value in dimensions.items():
        text = "" if value is None else str(value)
        out[name] = text[:MAX_DIMENSION_CHARS] if text.strip() else BLANK_DIMENSION
    return out


class EmfMetrics(InMemoryMetrics):
    """CloudWatch Embedded Metric Format: :meth:`flush` writes one JSON document per dimension set.

    Counters are summed, gauges keep the last value and samples are written as value arrays (EMF
    accepts up to 100 values per metric); everything recorded since the last flush is written
    and cleared. The Lambda adapter flushes after every invocation.

    A blank dimension value (``handler=""`` for a record that failed before any handler, a record
    with no shard) is written as :data:`BLANK_DIMENSION`: CloudWatch rejects a document with an
    empty value, and would drop every metric in it.
    """

    def __init__(self, namespace: str = NAMESPACE, out: IO[str] | None = None, **static: str) -> None:
        super().__init__()
        self.namespace = namespace
        self.out = out
        self.static = _emf_dimensions(static)

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        super().incr(name, value, **_emf_dimensions(dimensions))

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        super().gauge(name, value, **_emf_dimensions(dimensions))

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        super().observe(name, value, **_emf_dimensions(dimensions))

    def flush(self) -> None:
        with self._lock:
            groups: dict[tuple[tuple[str, str], ...], dict[str, tuple[str, Any]]] = defaultdict(dict)
            for (name, dims), value in self.counters.items():
                groups[dims][name] = (_unit(name), value)
            for (name, dims), value in self.gauges.items():
                groups[dims][name] = (_unit(name), value)
            for (name, dims), values in self.samples.items():
                groups[dims][name] = (_unit(name), values[-100:])
            self.counters.clear()
            self.gauges.clear()
            self.samples.clear()
        out = self.out or sys.stdout
        now = int(time.time() * 1000)
        for dims, metrics in groups.items():
            dimensions = dict(self.static) | dict(dims)
            document: dict[str, Any] = {
                "_aws": {
                    "Timestamp": now,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": self.namespace,
                            "Dimensions": [sorted(dimensions)],
                            "Metrics": [{"Name": n, "Unit": u} for n, (u, _) in sorted(metrics.items())],
                        }
                    ],
                },
                **dimensions,
                **{n: v for n, (_, v) in metrics.items()},
            }
            out.write(json.dumps(document, separators=(",", ":")) + "\n")
        out.flush()


def _unit(name: str) -> str:
    for table in (_COUNTERS, _GAUGES, _HISTOGRAMS):
        if name in table:
            return table[name][0]
    return "None"


class PrometheusMetrics:
    """prometheus-client metrics (``qldbstream_<name>``) with the documented label sets.

    Unknown names are created on first use with the labels given then. :meth:`serve` starts the
    ``/metrics`` endpoint on 127.0.0.1.
    """

    def __init__(self, registry: Any = None) -> None:
        from qldbstream.extras import require

        prom = require("prometheus_client", "metrics = prometheus")

        self._prom = prom
        self.registry = registry if registry is not None else prom.REGISTRY
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, kind: str, name: str, labels: tuple[str, ...]) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(name)
                if metric is None:
                    table: _Spec = {"counter": _COUNTERS, "gauge": _GAUGES, "histogram": _HISTOGRAMS}[kind]
                    _, doc, names = table.get(name, ("", name.replace("_", " "), labels))
                    cls = {
                        "counter": self._prom.Counter,
                        "gauge": self._prom.Gauge,
                        "histogram": self._prom.Histogram,
                    }[kind]
                    extra = {"multiprocess_mode": "livemax"} if kind == "gauge" else {}
                    metric = cls(f"qldbstream_{name}", doc, names, registry=self.registry, **extra)
                    self._metrics[name] = metric
        return metric

    def _labelled(self, kind: str, name: str, dimensions: dict[str, str]) -> Any:
        metric = self._metric(kind, name, tuple(sorted(dimensions)))
        names = metric._labelnames
        if not names:
            return metric
        return metric.labels(**{n: dimensions.get(n, "") for n in names})

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        self._labelled("counter", name, dimensions).inc(value)

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self._labelled("gauge", name, dimensions).set(value)

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        self._labelled("histogram", name, dimensions).observe(value)

    def serve(self, port: int) -> Any:
        """Serve ``/metrics`` on 127.0.0.1:``port``; returns the server (``.shutdown()`` to stop)."""
        server, _thread = self._prom.start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return server


def build_metrics(
    spec: str, namespace: str = NAMESPACE, dimensions: Mapping[str, str] | None = None
) -> Metrics:
    """The backend for a ``metrics`` setting value (``none``, ``emf``, ``prometheus:PORT``).

    ``namespace`` and ``dimensions`` (the ``metrics_namespace`` and ``metrics_dimensions``
    settings) are EMF's: the CloudWatch namespace, and dimensions added to every metric (the
    function, the stream). Prometheus has neither: its metrics are ``qldbstream_<name>``.
    """
    if spec == "emf":
        emf = EmfMetrics(namespace)
        emf.static = _emf_dimensions(dict(dimensions or {}))  # any name, "out" and "namespace" too
        return emf
    if spec.startswith("prometheus:"):
        return PrometheusMetrics()
    return NullMetrics()
