"""One metrics facade for every runtime.

The pipeline and handlers record through :class:`Metrics`; the runtime picks the backend
(CloudWatch EMF on Lambda, a Prometheus endpoint on the workers, nothing by default).
Names are stable and documented in the operations guide; dimensions are keyword arguments.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

__all__ = ["InMemoryMetrics", "Metrics", "NullMetrics"]


class Metrics(Protocol):
    def incr(self, name: str, value: float = 1, **dimensions: str) -> None: ...
    def gauge(self, name: str, value: float, **dimensions: str) -> None: ...
    def observe(self, name: str, value: float, **dimensions: str) -> None:
        """A distribution sample (latency in seconds, batch size)."""
        ...


class NullMetrics:
    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        pass

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        pass

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        pass


class InMemoryMetrics:
    """Keeps everything in dictionaries: for tests, the demo report and the CLI."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        self.counters[(name, tuple(sorted(dimensions.items())))] += value

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self.gauges[(name, tuple(sorted(dimensions.items())))] = value

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        self.samples[(name, tuple(sorted(dimensions.items())))].append(value)

    def total(self, name: str, **dimensions: str) -> float:
        """Sum of a counter over every dimension set that includes ``dimensions``."""
        want = set(dimensions.items())
        return sum(v for (n, dims), v in self.counters.items() if n == name and want <= set(dims))
