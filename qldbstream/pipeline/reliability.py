"""Small, composable reliability policies: retry, circuit breaker, adaptive batch size, and the
classification that maps an exception to what happens next.

All are pure: time comes from an injected ``clock`` (``time.monotonic`` is the breaker's default,
the one use of :mod:`time` here) and nothing here sleeps on its own - :func:`retry`, the one retry
loop, sleeps through the ``sleep`` its caller injects. Which outside errors are transient is not
known here: callers pass the rule (``classify(..., transient=...)``; the application's pipeline is
given :func:`qldbstream.io.aws_errors.is_transient`). Defaults are the
seed design's (qldb-stream-architecture.md, *backpressure handling*): 5 attempts, 100 ms base,
60 s cap, ×2; breaker 5 failures, 60 s recovery, 3 half-open trials; batches of 10-500 records
aiming at 100 ms.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from qldbstream.core.errors import HaltShardError, PoisonRecordError, RetryableError

__all__ = [
    "AdaptiveBatchSize",
    "BreakerState",
    "CircuitBreaker",
    "Disposition",
    "RetryPolicy",
    "TransientCheck",
    "classify",
    "retry",
]

_T = TypeVar("_T")


class Disposition(StrEnum):
    """What the pipeline does with a failed record."""

    DEAD_LETTER = "dead-letter"  #: poison: dead-letter it now, go on with the next record
    RETRY_THEN_HALT = "retry-then-halt"  #: transient: retry; when retries run out, halt the shard
    RETRY_THEN_DEAD_LETTER = "retry-then-dead-letter"  #: unknown: retry; then dead-letter it
    HALT = "halt"  #: stop the shard at this record now


#: A rule for errors from outside qldbstream (a library's or a cloud's): True when transient.
TransientCheck = Callable[[BaseException], bool]


def classify(
    exc: BaseException,
    *,
    retryable: tuple[type[BaseException], ...] = (),
    poison: tuple[type[BaseException], ...] = (),
    transient: TransientCheck | None = None,
) -> Disposition:
    """Map an exception to a :class:`Disposition`.

    ``retryable`` and ``poison`` let a handler declare its own transient and permanent errors
    (checked first). Then: qldbstream's own error classes say it directly; connection and
    timeout errors are transient, and so is what the ``transient`` rule calls transient (e.g.
    :func:`qldbstream.io.aws_errors.is_transient`: AWS throttling, 5xx and connection errors;
    without a rule, no outside error is); anything else (a bug, bad data the handler cannot
    take) is retried and then dead-lettered, so one bad record cannot stop a shard forever.
    """
    if poison and isinstance(exc, poison):
        return Disposition.DEAD_LETTER
    if retryable and isinstance(exc, retryable):
        return Disposition.RETRY_THEN_HALT
    if isinstance(exc, PoisonRecordError):
        return Disposition.DEAD_LETTER
    if isinstance(exc, HaltShardError):
        return Disposition.HALT
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return Disposition.RETRY_THEN_HALT
    if transient is not None and transient(exc):
        return Disposition.RETRY_THEN_HALT
    return Disposition.RETRY_THEN_DEAD_LETTER


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by the caller's deadline: the one
    backoff of qldbstream (calls retried by :func:`retry`, halted shards, throttled AWS calls).

    Attempts are numbered from 1: attempt ``n`` that fails waits between half and all of
    ``min(max_delay, base_delay * multiplier ** (n - 1))`` seconds.
    """

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 60.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("retry policy needs max_attempts >= 1, delays >= 0 and multiplier >= 1")

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * self.multiplier ** max(0, attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def next_delay(self, attempt: int, now: float, deadline: float | None) -> float | None:
        """The wait before attempt ``attempt + 1``, or ``None`` when no retry is left in time."""
        if attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt)
        if deadline is not None and now + wait >= deadline:
            return None
        return wait


def retry(
    call: Callable[[], _T],
    policy: RetryPolicy,
    *,
    retryable: Callable[[Exception], bool],
    sleep: Callable[[float], None],
    clock: Callable[[], float] | None = None,
    deadline: float | None = None,
    on_failure: Callable[[Exception, int, float | None], None] | None = None,
    give_up: Callable[[Exception, int], BaseException] | None = None,
) -> _T:
    """``call()``, tried again after each failure that ``retryable`` accepts, as ``policy`` allows.

    After failed attempt ``n`` (from 1) it waits :meth:`RetryPolicy.next_delay` through the
    injected ``sleep`` (``deadline`` is on ``clock``'s scale; both optional). ``on_failure`` hears
    of every retryable failure with the attempt and the wait (``None``: no retry is left). An
    error ``retryable`` refuses propagates at once; the last one, when retries run out, propagates
    too - or ``give_up(error, attempts)`` is raised from it.
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as exc:
            if not retryable(exc):
                raise
            delay = policy.next_delay(attempt, clock() if clock is not None else 0.0, deadline)
            if on_failure is not None:
                on_failure(exc, attempt, delay)
            if delay is None:
                if give_up is None:
                    raise
                raise give_up(exc, attempt) from exc
            sleep(delay)
            attempt += 1


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per handler/sink: after ``failure_threshold`` consecutive failures the breaker opens and
    calls are refused for ``recovery_timeout`` seconds; then up to ``half_open_trials`` calls
    are let through - all succeed: closed again; one fails: open again.

    Listeners are called with ``(breaker, old_state, new_state)`` on every transition.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        half_open_trials: int = 3,
        clock: Callable[[], float] = time.monotonic,
        listeners: tuple[Callable[[CircuitBreaker, BreakerState, BreakerState], None], ...] = (),
    ) -> None:
        if failure_threshold < 1 or half_open_trials < 1 or recovery_timeout < 0:
            raise ValueError("breaker needs failure_threshold >= 1, half_open_trials >= 1, recovery >= 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.half_open_trials = half_open_trials
        self.clock = clock
        self.listeners = listeners
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trials_started = 0
        self._trials_passed = 0

    def allow(self) -> bool:
        """May a call go through now? (In half-open, counts the trial.)"""
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.recovery_timeout:
                return False
            self._move(BreakerState.HALF_OPEN)
            self._trials_started = self._trials_passed = 0
        if self.state is BreakerState.HALF_OPEN:
            if self._trials_started >= self.half_open_trials:
                return False
            self._trials_started += 1
        return True

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.recovery_timeout - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._trials_passed += 1
            if self._trials_passed >= self.half_open_trials:
                self._move(BreakerState.CLOSED)
                self.failures = 0
        else:
            self.failures = 0

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self.opened_at = self.clock()
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new:
            for listener in self.listeners:
                listener(self, old, new)


@dataclass
class AdaptiveBatchSize:
    """Batch size controller: grow while batches finish under the target time, shrink when over.

    Multiplicative decrease proportional to the overshoot, additive increase (+25%) when well
    under target; always within ``[minimum, maximum]``. Feed it each batch's size and duration.
    """

    minimum: int = 10
    maximum: int = 500
    target_seconds: float = 0.100
    size: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum or self.target_seconds <= 0:
            raise ValueError("batch size needs 1 <= minimum <= maximum and a positive target")
        self.size = max(self.minimum, min(self.maximum, self.size))

    def observe(self, batch_size: int, seconds: float) -> int:
        """Record one batch; return the size to use next."""
        if batch_size <= 0:
            return self.size
        if seconds > self.target_seconds:
            proposed = int(self.size * self.target_seconds / seconds)
        elif seconds < self.target_seconds * 0.75 and batch_size >= self.size:
            proposed = self.size + max(1, self.size // 4)
        else:
            proposed = self.size
        self.size = max(self.minimum, min(self.maximum, proposed))
        return self.size
