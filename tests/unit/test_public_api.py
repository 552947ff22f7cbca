"""The public plugin API (``qldbstream.api``): what it promises, and that the built-in handlers and
the example plugin use nothing else (docs/plugins.md, "API reference")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from qldbstream.api import Handler, HandlerContext


class _FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_remaining_time_reads_the_injected_clock() -> None:
    clock = _FakeClock(1000.0)
    ctx = HandlerContext("h", "shard-1", deadline=1030.0, clock=clock)
    assert ctx.remaining_time() == 30.0
    clock.now = 1042.5
    assert ctx.remaining_time() == -12.5


def test_remaining_time_keeps_the_clock_on_a_per_record_copy() -> None:
    clock = _FakeClock(5.0)
    ctx = HandlerContext("h", "shard-1", deadline=7.0, clock=clock)
    record: Any = SimpleNamespace(position=None)  # for_record reads only the record's position
    assert ctx.for_record(record, 0).remaining_time() == 2.0


def test_no_deadline_means_no_remaining_time() -> None:
    assert HandlerContext("h", None, clock=_FakeClock(1.0)).remaining_time() is None


def test_handler_error_classes_default_to_none() -> None:
    class Plain(Handler):
        pass

    class Declared(Handler):
        retryable_errors = (TimeoutError,)
        poison_errors = (ValueError,)

    assert Plain.retryable_errors == () and Plain.poison_errors == ()
    assert Declared().retryable_errors == (TimeoutError,)
    assert Declared().poison_errors == (ValueError,)
