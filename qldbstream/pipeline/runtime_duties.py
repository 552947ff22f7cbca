"""What every runtime owes its handlers and its metrics around the batches, written once (sans I/O).

* :func:`release_shard` - tell every handler ``shard_released(shard_id)`` when a shard is no longer
  this process's (read to its end, the lease lost, the run over): each handler hears it, even if
  another one fails (the failure is logged, not hidden);
* :func:`flush_metrics` - per-call metric backends (EMF) write what they have after an invocation
  or a ``processRecords`` call; a failure is logged and never fails the batch or stops a shard;
* :func:`gauge_lag` and :func:`iterator_age_ms` - ``stream_lag_ms`` (Kinesis' ``MillisBehindLatest``)
  and ``iterator_age_ms`` (now minus the arrival of the newest record read, never negative), the
  same gauges under the worker and the KCL. The caller passes the time: no clock here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from qldbstream.api.handler import Handler
from qldbstream.api.metrics import Metrics

__all__ = ["flush_metrics", "gauge_lag", "iterator_age_ms", "release_shard"]


def release_shard(handlers: Sequence[Handler], shard_id: str, log: logging.Logger) -> None:
    """``shard_released(shard_id)`` for every handler, in order; a failure is logged on ``log``."""
    for handler in handlers:
        try:
            handler.shard_released(shard_id)
        except Exception:  # every handler must hear it; the error is logged, not hidden
            log.exception("handler %s failed in shard_released(%s)", handler.name, shard_id)


def flush_metrics(metrics: Metrics, log: logging.Logger) -> None:
    """``metrics.flush()`` when the backend has one (EMF); a failure is logged on ``log``."""
    flush = getattr(metrics, "flush", None)
    if callable(flush):
        try:
            flush()
        except Exception:  # metrics must never fail a batch nor stop a shard
            log.exception("flushing metrics failed")


def iterator_age_ms(now: float, arrival: float) -> float:
    """Milliseconds from ``arrival`` (the newest record read, epoch seconds) to ``now``; at least 0."""
    return max(0.0, (now - arrival) * 1000)


def gauge_lag(
    metrics: Metrics, shard_id: str, millis_behind_latest: float | None, age_ms: float | None
) -> None:
    """The shard's ``stream_lag_ms`` and ``iterator_age_ms`` gauges, each when it is known."""
    if millis_behind_latest is not None:
        metrics.gauge("stream_lag_ms", float(millis_behind_latest), shard=shard_id)
    if age_ms is not None:
        metrics.gauge("iterator_age_ms", age_ms, shard=shard_id)
