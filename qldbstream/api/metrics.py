"""The metrics facade: what the pipeline, the runtimes and handlers record through.

A handler gets it as ``ctx.metrics``. The runtime picks the backend (``qldbstream.io.metrics``:
CloudWatch EMF, Prometheus) from the ``metrics`` setting; :class:`NullMetrics` is the default and
:class:`InMemoryMetrics` serves tests, the demo report and the CLI. The metric names are listed
in docs/operations.md.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

__all__ = ["NAMESPACE", "InMemoryMetrics", "Metrics", "NullMetrics"]

#: The CloudWatch namespace of every metric.
NAMESPACE = "qldbstream"


class Metrics(Protocol):
    """What a handler records through (``ctx.metrics``): counters, gauges and distributions.

    ``dimensions`` are keyword arguments (``handler="audit"``); the backend decides how they are
    emitted (CloudWatch EMF dimensions, Prometheus labels).
    """

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None: ...
    def gauge(self, name: str, value: float, **dimensions: str) -> None: ...
    def observe(self, name: str, value: float, **dimensions: str) -> None:
        """A distribution sample (latency in seconds, batch size)."""
        ...


class NullMetrics:
    """Records nothing: the default when no metrics backend is configured."""

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        pass

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        pass

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        pass


_Key = tuple[str, tuple[tuple[str, str], ...]]


class InMemoryMetrics:
    """Keeps everything in dictionaries: for tests, the demo report and the CLI."""

    def __init__(self) -> None:
        self.counters: dict[_Key, float] = defaultdict(float)
        self.gauges: dict[_Key, float] = {}
        self.samples: dict[_Key, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(dimensions.items())))] += value

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        with self._lock:
            self.gauges[(name, tuple(sorted(dimensions.items())))] = value

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        with self._lock:
            self.samples[(name, tuple(sorted(dimensions.items())))].append(value)

    def total(self, name: str, **dimensions: str) -> float:
        """Sum of a counter over every dimension set that includes ``dimensions``."""
        want = set(dimensions.items())
        return sum(v for (n, dims), v in self.counters.items() if n == name and want <= set(dims))
