"""What the demo reports while it runs: :class:`DemoProgress` snapshots, and the worker's
``on_progress`` observer that keeps live counters and per-shard maxima and scrapes ``/metrics``
while the worker runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qldbstream_tools.demo.scrape import MetricsEndpoint

if TYPE_CHECKING:
    from qldbstream.runtimes.worker import ShardStatus

__all__ = ["DemoProgress", "Progress"]


@dataclass(frozen=True)
class DemoProgress:
    """Where the demo stands; ``shards`` and the counters are filled while the worker runs."""

    stage: str
    done: int = 0
    total: int | None = None
    shards: tuple[ShardStatus, ...] = ()
    #: Kinesis records put into each shard (what "read" counts up to)
    put: dict[str, int] = field(default_factory=dict)
    #: user records through the pipeline (duplicates included), Kinesis records read
    processed: int = 0
    kinesis_records: int = 0
    dead_lettered: int = 0
    dedupe_hits: int = 0
    late: int = 0
    alerts: int = 0
    scrapes: int = 0
    elapsed: float = 0.0


Progress = Callable[[DemoProgress], None]


class _Observer:
    """The worker's ``on_progress``: live counters, per-shard maxima, scrapes while it runs."""

    def __init__(
        self,
        worker_status: Callable[[], dict[str, ShardStatus]],
        metrics: MetricsEndpoint,
        interval: float,
        progress: Progress | None,
        started: float,
        put: dict[str, int],
    ) -> None:
        self.put = put
        self.status = worker_status
        self.endpoint = metrics
        self.interval = interval
        self.progress = progress
        self.started = started
        self.max_lag: dict[str, int] = {}
        self.max_age: dict[str, float] = {}
        self._last_scrape = 0.0
        self.scrape_errors: list[str] = []

    def snapshot(self, stage: str) -> DemoProgress:
        m = self.endpoint.metrics
        return DemoProgress(
            stage,
            shards=tuple(self.status().values()),
            put=self.put,
            processed=int(m.total("records_in", stage="user")),
            kinesis_records=int(m.total("records_in", stage="kinesis")),
            dead_lettered=int(m.total("dlq_writes")),
            dedupe_hits=int(m.total("dedupe_hits")),
            late=int(m.total("late_revisions")),
            alerts=int(m.total("fraud_alerts")),
            scrapes=len(self.endpoint.scrapes),
            elapsed=time.monotonic() - self.started,
        )

    def __call__(self, shard: ShardStatus) -> None:
        if shard.millis_behind_latest is not None:
            self.max_lag[shard.shard_id] = max(
                self.max_lag.get(shard.shard_id, 0), shard.millis_behind_latest
            )
        if shard.iterator_age_ms is not None:
            self.max_age[shard.shard_id] = max(self.max_age.get(shard.shard_id, 0.0), shard.iterator_age_ms)
        now = time.monotonic()
        counted = self.endpoint.metrics.total("records_in", stage="user") > 0
        first = not any(s.phase == "during" for s in self.endpoint.scrapes)
        if counted and (first or now - self._last_scrape >= self.interval):
            self._last_scrape = now
            try:
                self.endpoint.scrape("during")  # a GET of /metrics while the worker is mid-run
            except OSError as exc:  # the metrics check reports the missing scrape; the run goes on
                self.scrape_errors.append(repr(exc))
        if self.progress is not None:
            self.progress(self.snapshot("worker"))
