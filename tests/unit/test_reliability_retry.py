"""The one retry loop (``reliability.retry``) and the pluggable transient-error rule, with injected time."""

from __future__ import annotations

import random

import pytest

from qldbstream.core.errors import RetryableError
from qldbstream.pipeline.reliability import Disposition, RetryPolicy, classify, retry


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``"done"``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def policy(attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, base_delay=0.1, max_delay=1.0, rng=random.Random(3))


def test_retries_until_success_with_the_policys_delays_numbered_from_one() -> None:
    slept: list[float] = []
    seen: list[tuple[int, float | None]] = []
    call = Flaky(2, ValueError("busy"))
    result = retry(
        call,
        policy(),
        retryable=lambda exc: True,
        sleep=slept.append,
        on_failure=lambda exc, attempt, delay: seen.append((attempt, delay)),
    )
    assert result == "done" and call.calls == 3
    expected = policy()
    assert slept == [expected.delay(1), expected.delay(2)]
    assert seen == [(1, slept[0]), (2, slept[1])]


def test_an_error_not_retryable_propagates_at_once() -> None:
    slept: list[float] = []
    call = Flaky(5, KeyError("x"))
    with pytest.raises(KeyError):
        retry(call, policy(), retryable=lambda exc: isinstance(exc, ValueError), sleep=slept.append)
    assert call.calls == 1 and slept == []


def test_when_attempts_run_out_the_last_error_or_give_up_is_raised() -> None:
    slept: list[float] = []
    seen: list[float | None] = []
    call = Flaky(10, ValueError("busy"))
    with pytest.raises(ValueError, match="busy"):
        retry(
            call,
            policy(3),
            retryable=lambda exc: True,
            sleep=slept.append,
            on_failure=lambda exc, attempt, delay: seen.append(delay),
        )
    assert call.calls == 3 and len(slept) == 2 and seen[-1] is None

    with pytest.raises(RetryableError, match="3 attempts") as caught:
        retry(
            Flaky(10, ValueError("busy")),
            policy(3),
            retryable=lambda exc: True,
            sleep=lambda _: None,
            give_up=lambda exc, attempts: RetryableError(f"gave up after {attempts} attempts"),
        )
    assert isinstance(caught.value.__cause__, ValueError)


def test_the_deadline_stops_retries_on_the_injected_clock() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    call = Flaky(10, ValueError("busy"))
    long = RetryPolicy(max_attempts=100, base_delay=1.0, max_delay=1.0, rng=random.Random(1))
    with pytest.raises(ValueError):
        retry(call, long, retryable=lambda exc: True, sleep=sleep, clock=lambda: now[0], deadline=3.0)
    assert now[0] < 3.0 and 3 <= call.calls <= 7


def test_outside_errors_are_transient_only_by_the_rule_given() -> None:
    class SinkBusy(Exception):
        pass

    assert classify(SinkBusy(), transient=lambda exc: False) is Disposition.RETRY_THEN_DEAD_LETTER
    assert (
        classify(SinkBusy(), transient=lambda exc: isinstance(exc, SinkBusy)) is Disposition.RETRY_THEN_HALT
    )
    # qldbstream's own classes and the handler's declarations come first, whatever the rule says
    assert classify(RetryableError("x"), transient=lambda exc: False) is Disposition.RETRY_THEN_HALT
    assert classify(SinkBusy(), poison=(SinkBusy,), transient=lambda exc: True) is Disposition.DEAD_LETTER
