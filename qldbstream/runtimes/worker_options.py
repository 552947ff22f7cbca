"""How the standalone worker reads (:class:`WorkerOptions`): start and end, batch sizes, polling,
the backoff of a halted shard, the checkpoint key, and when ``run --until-caught-up`` gives up.

Modes: *continuous* (``TRIM_HORIZON``/``LATEST``, runs until stopped), *catch-up* (``AT_TIMESTAMP``,
then continues), *bounded export* (``end_time``: a shard stops at its first record that arrived at or
after ``end_time``, or after a CONTROL ``COMPLETED`` record; the run ends when every shard is done).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from qldbstream.core.errors import ConfigurationError
from qldbstream.io.kinesis_reader import LATEST, TRIM_HORIZON, StartPosition

if TYPE_CHECKING:
    from qldbstream.app.config import Settings

__all__ = ["WorkerOptions"]


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker reads: start and end, batch sizes, polling, backoff, the checkpoint key.

    ``stop_at_completed`` (default: when ``end_time`` is set) ends a shard after a CONTROL
    ``COMPLETED`` record, and then every other shard at its tip. ``halt_backoff`` is the first
    wait (seconds) before a halted shard is read again; it doubles up to ``halt_backoff_cap``.
    ``checkpoint_key`` names the stream in the checkpoint store (default: the stream name).
    """

    start: StartPosition = TRIM_HORIZON
    end_time: datetime | None = None
    stop_at_completed: bool | None = None
    batch_min: int = 10
    batch_max: int = 500
    batch_target_ms: int = 100
    poll_interval: float = 1.0
    halt_backoff: float = 1.0
    halt_backoff_cap: float = 30.0
    checkpoint_key: str | None = None
    #: ``run(until_caught_up=True)`` returns ``"halted"`` once a shard halted this many times in a
    #: row, for at least ``halt_limit_seconds``, while every other shard is caught up
    halt_limit: int = 10
    halt_limit_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.end_time is not None and self.end_time.tzinfo is None:
            raise ConfigurationError("end_time needs a time zone, e.g. 2024-01-01T00:00:00Z")
        if not 1 <= self.batch_min <= self.batch_max <= 10_000:
            raise ConfigurationError(
                "batch sizes need 1 <= batch_min <= batch_max <= 10000 (GetRecords Limit)"
            )
        if self.poll_interval <= 0 or self.halt_backoff <= 0 or self.halt_backoff_cap < self.halt_backoff:
            raise ConfigurationError(
                "poll_interval and halt_backoff must be positive, the cap >= the backoff"
            )

    @property
    def stops_at_completed(self) -> bool:
        return self.end_time is not None if self.stop_at_completed is None else self.stop_at_completed

    @classmethod
    def from_settings(cls, s: Settings, **overrides: object) -> WorkerOptions:
        """Start position, end time and batch sizes from the settings; the key is ``app/stream``."""
        if s.start_position == "LATEST":
            if s.start_time is not None:
                raise ConfigurationError("start_time contradicts start_position LATEST")
            start = LATEST
        elif s.start_time is not None:
            start = StartPosition.at_timestamp(s.start_time)
        else:
            start = TRIM_HORIZON
        values: dict[str, object] = {
            "start": start,
            "end_time": s.end_time,
            "batch_min": s.batch_min,
            "batch_max": s.batch_max,
            "batch_target_ms": s.batch_target_ms,
            "checkpoint_key": f"{s.application_name}/{s.stream_name}",
            **overrides,
        }
        return cls(**values)  # type: ignore[arg-type]
