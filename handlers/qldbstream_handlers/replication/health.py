"""Per-target health: consecutive failures mark a target unhealthy, successful probes bring it back.

The state machine (times come from an injected clock, so tests never sleep)::

    healthy --(failover_threshold failures in a row: puts or probes)--> unhealthy
    unhealthy --(recovery_threshold successful probes in a row)--> healthy

A successful put also counts as a health check: a target in use is probed only when nothing
was put to it for ``interval`` seconds. An unhealthy target is never written to before a
probe (``DescribeStreamSummary``) succeeds, and it is probed at most once per ``interval``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TargetHealth"]


class TargetHealth:
    """Health of one target; ``on_change(health)`` is called when ``healthy`` flips."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        recovery_threshold: int,
        interval: float,
        on_change: Callable[[TargetHealth], None] | None = None,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.recovery_threshold = recovery_threshold
        self.interval = interval
        self.on_change = on_change
        self.healthy = True
        #: consecutive failures (puts or probes) since the last success
        self.failures = 0
        #: consecutive successful probes while unhealthy
        self.successes = 0
        #: clock value of the last put or probe (``None``: never checked)
        self.last_check: float | None = None
        self.last_error = ""

    def record_success(self, now: float, *, probe: bool = False) -> None:
        """A put or probe worked. An unhealthy target needs ``recovery_threshold`` probes in a row."""
        self.last_check = now
        self.failures = 0
        if self.healthy:
            return
        if probe:
            self.successes += 1
        if self.successes >= self.recovery_threshold:
            self.successes = 0
            self._set(True)

    def record_failure(self, now: float, error: str) -> None:
        """A put or probe failed; the ``threshold``-th failure in a row marks the target unhealthy."""
        self.last_check = now
        self.last_error = error
        self.successes = 0
        self.failures += 1
        if self.healthy and self.failures >= self.threshold:
            self._set(False)

    def check_due(self, now: float) -> bool:
        """Whether a probe is due: never checked, or ``interval`` seconds since the last check."""
        return self.last_check is None or now - self.last_check >= self.interval

    def next_check_in(self, now: float) -> float:
        """Seconds until the next probe is due (0 when it is due now)."""
        if self.last_check is None:
            return 0.0
        return max(0.0, self.last_check + self.interval - now)

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        if self.on_change is not None:
            self.on_change(self)

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "unhealthy"
        return f"TargetHealth({self.name!r}, {state}, failures={self.failures})"
