"""Fakes for what no test should really do: wait, or write to a real dead-letter queue."""

from __future__ import annotations

from collections.abc import Iterator

from qldbstream.pipeline.dlq import DeadLetter

__all__ = ["FakeTime", "MemoryDLQ"]


class FakeTime:
    """An injected clock and ``sleep``: sleeping advances the clock and is recorded."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float | None) -> None:
        seconds = seconds or 0.0  # time.sleep(None) is not valid, but a worker may pass an unset delay
        assert seconds >= 0, f"negative sleep: {seconds}"
        self.slept.append(seconds)
        self.now += seconds


class MemoryDLQ:
    """A dead-letter queue in a list; ``fail = True`` makes every write fail (a DLQ outage)."""

    def __init__(self, fail: bool = False) -> None:
        self.letters: list[DeadLetter] = []
        self.fail = fail

    def put(self, letter: DeadLetter) -> None:
        if self.fail:
            raise ConnectionError("DLQ unavailable")
        self.letters.append(letter)

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def delete(self, handle: str) -> None:
        pass
