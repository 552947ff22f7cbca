"""Reliability policies and the de-duplication planner, with injected time."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from qldbstream.core.dedupe import Watermark
from qldbstream.core.errors import HaltShardError, MalformedRecordError, RetryableError
from qldbstream.io.aws_errors import classify
from qldbstream.pipeline.reliability import (
    AdaptiveBatchSize,
    BreakerState,
    CircuitBreaker,
    Disposition,
    RetryPolicy,
)
from qldbstream.pipeline.stores import InMemoryDedupeStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MalformedRecordError("bad"), Disposition.DEAD_LETTER),
        (HaltShardError("stop"), Disposition.HALT),
        (RetryableError("busy"), Disposition.RETRY_THEN_HALT),
        (ConnectionError("down"), Disposition.RETRY_THEN_HALT),
        (TimeoutError(), Disposition.RETRY_THEN_HALT),
        (EndpointConnectionError(endpoint_url="http://x"), Disposition.RETRY_THEN_HALT),
        (client_error("ProvisionedThroughputExceededException"), Disposition.RETRY_THEN_HALT),
        (client_error("Whatever", 503), Disposition.RETRY_THEN_HALT),
        (client_error("ValidationException"), Disposition.RETRY_THEN_DEAD_LETTER),
        (KeyError("amount"), Disposition.RETRY_THEN_DEAD_LETTER),
    ],
)
def test_classification(exc: BaseException, expected: Disposition) -> None:
    assert classify(exc) is expected


def test_handler_declared_errors_win() -> None:
    assert classify(KeyError("x"), poison=(KeyError,)) is Disposition.DEAD_LETTER
    assert classify(ValueError("x"), retryable=(ValueError,)) is Disposition.RETRY_THEN_HALT


def test_retry_delays_grow_with_jitter_and_respect_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=60, multiplier=2, rng=random.Random(1))
    delays = [policy.delay(n) for n in range(1, 6)]
    for n, d in enumerate(delays, 1):
        ceiling = min(60, 0.1 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert policy.next_delay(5, now=0, deadline=None) is None  # attempts used up
    assert policy.next_delay(1, now=0, deadline=0.01) is None  # no time left
    assert policy.next_delay(1, now=0, deadline=10) is not None
    assert RetryPolicy(max_attempts=30, base_delay=1, max_delay=60).delay(30) <= 60


def test_breaker_opens_refuses_then_half_opens_and_closes() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker("sink", 5, 60.0, 3, clock, (lambda b, old, new: changes.append((old, new)),))
    for _ in range(4):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 59.9
    assert not breaker.allow() and breaker.retry_after() == pytest.approx(0.1)
    clock.now = 60.0
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]  # 3 trials
    for _ in range(3):
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_reopens_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker("sink", 1, 10.0, 3, clock)
    breaker.record_failure()
    clock.now = 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker("sink", 3, 10.0, 1, Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_adaptive_batch_size_tracks_the_target_within_bounds() -> None:
    sizes = AdaptiveBatchSize(minimum=10, maximum=500, target_seconds=0.1, size=100)
    assert sizes.observe(100, 0.2) == 50  # twice too slow: halve
    assert sizes.observe(50, 0.05) == 62  # fast: +25%
    for _ in range(40):
        sizes.observe(sizes.size, 0.01)
    assert sizes.size == 500
    for _ in range(40):
        sizes.observe(sizes.size, 5.0)
    assert sizes.size == 10
    assert sizes.observe(0, 1.0) == 10  # an empty batch says nothing


def test_in_memory_store_bounds_and_expiry() -> None:
    clock = Clock()
    store = InMemoryDedupeStore(max_entries=3, ttl=100, clock=clock)
    store.mark_done("h", ["a", "b", "c", "d"])
    assert store.done("h", ["a", "b", "c", "d"]) == {"b", "c", "d"}  # the oldest was evicted
    clock.now = 101
    assert store.done("h", ["b", "c", "d"]) == set()
    store.advance("h", {"doc": Watermark(5)})
    store.advance("h", {"doc": Watermark(3)})
    assert store.watermarks("h", ["doc"]) == {"doc": Watermark(5)}
    store.advance("h", {"doc": Watermark(6, deleted=True)})
    assert store.watermarks("h", ["doc"]) == {"doc": Watermark(6, True)}
    assert store.watermarks("other", ["doc"]) == {}
