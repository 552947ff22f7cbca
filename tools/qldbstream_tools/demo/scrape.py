"""Metrics for the demo: recorded twice, served on 127.0.0.1 and scraped over HTTP while it runs.

:class:`TeeMetrics` is the app's metrics facade: every value goes to an
:class:`~qldbstream.api.metrics.InMemoryMetrics` (exact numbers for the report and the live display)
and to a :class:`~qldbstream.io.metrics.PrometheusMetrics` on a private registry, which
:class:`MetricsEndpoint` serves at ``http://127.0.0.1:<free port>/metrics`` - what a Prometheus
server would scrape from ``qldbstream run``. :meth:`MetricsEndpoint.scrape` reads it back with a
plain HTTP GET and keeps a few series (:data:`SHOWN`).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.io.metrics import PrometheusMetrics

__all__ = ["SHOWN", "USER_RECORDS", "MetricsEndpoint", "Scrape", "TeeMetrics"]

#: Series kept from each scrape: (label in the report, metric sample name, required labels).
SHOWN: tuple[tuple[str, str, dict[str, str]], ...] = (
    ('qldbstream_records_in_total{stage="kinesis"}', "qldbstream_records_in_total", {"stage": "kinesis"}),
    ('qldbstream_records_in_total{stage="user"}', "qldbstream_records_in_total", {"stage": "user"}),
    (
        'qldbstream_verification_failures_total{check="V2"}',
        "qldbstream_verification_failures_total",
        {"check": "V2"},
    ),
    ("qldbstream_verification_failures_total (sum)", "qldbstream_verification_failures_total", {}),
    ("qldbstream_dedupe_hits_total (sum)", "qldbstream_dedupe_hits_total", {}),
    (
        'qldbstream_late_revisions_total{action="delivered"} (sum)',
        "qldbstream_late_revisions_total",
        {"action": "delivered"},
    ),
    ("qldbstream_dlq_writes_total (sum)", "qldbstream_dlq_writes_total", {}),
    ("qldbstream_checkpoints_total (sum)", "qldbstream_checkpoints_total", {}),
    ("qldbstream_fraud_alerts_total (sum)", "qldbstream_fraud_alerts_total", {}),
    ("qldbstream_replication_records_total (sum)", "qldbstream_replication_records_total", {}),
    ("qldbstream_iterator_age_ms (max)", "qldbstream_iterator_age_ms", {}),
)

#: The series the demo checks: user records into the pipeline.
USER_RECORDS = SHOWN[1][0]


class TeeMetrics(InMemoryMetrics):
    """An :class:`InMemoryMetrics` that also records everything in a :class:`PrometheusMetrics`."""

    def __init__(self, prometheus: PrometheusMetrics) -> None:
        super().__init__()
        self.prometheus = prometheus

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        super().incr(name, value, **dimensions)
        self.prometheus.incr(name, value, **dimensions)

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        super().gauge(name, value, **dimensions)
        self.prometheus.gauge(name, value, **dimensions)

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        super().observe(name, value, **dimensions)
        self.prometheus.observe(name, value, **dimensions)

    def max_gauge(self, name: str) -> float | None:
        """The largest current value of a gauge over its dimension sets (``None``: never set)."""
        with self._lock:
            values = [v for (n, _), v in self.gauges.items() if n == name]
        return max(values) if values else None


@dataclass(frozen=True)
class Scrape:
    """One GET of ``/metrics``: when (seconds into the run), in which phase, the values kept."""

    phase: str
    at: float
    values: dict[str, float]
    series: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "atSeconds": round(self.at, 3),
            "series": self.series,
            "values": self.values,
        }


@dataclass
class MetricsEndpoint:
    """``/metrics`` of a :class:`TeeMetrics` on 127.0.0.1 (a free port), scraped on demand."""

    metrics: TeeMetrics
    started: float = field(default_factory=time.monotonic)
    scrapes: list[Scrape] = field(default_factory=list)
    _server: Any = None
    port: int = 0

    @classmethod
    def start(cls) -> MetricsEndpoint:
        from prometheus_client import CollectorRegistry

        prometheus = PrometheusMetrics(CollectorRegistry())
        endpoint = cls(TeeMetrics(prometheus))
        endpoint._server = prometheus.serve(0)  # port 0: the kernel picks a free one
        endpoint.port = int(endpoint._server.server_port)
        return endpoint

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self, phase: str) -> Scrape:
        """GET ``/metrics`` now and keep the :data:`SHOWN` series."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310 - our loopback server
            text = response.read().decode("utf-8")
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        values: dict[str, float] = {}
        for label, name, labels in SHOWN:
            matching = [
                s.value
                for s in samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            ]
            if matching:
                values[label] = max(matching) if name.endswith("_ms") else sum(matching)
        scrape = Scrape(phase, time.monotonic() - self.started, values, len(samples))
        self.scrapes.append(scrape)
        return scrape

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
