"""Checkpoints under the KCL MultiLangDaemon: the round trip, its retries, and what a refusal means.

The daemon records a checkpoint in its lease table when the record processor asks it to
(:class:`Checkpointer`, a synchronous round trip over the protocol). :func:`send_checkpoint` asks
with retries while the refusal is transient (:attr:`CheckpointFailure.retryable`: throttling, the lease
table unreachable) and returns the refusal that remains, if any; the processor then either stops
checkpointing (:attr:`CheckpointFailure.lease_gone`) or tries again later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from amazon_kclpy import kcl

from qldbstream.pipeline.reliability import RetryPolicy, retry

__all__ = ["CheckpointFailure", "Checkpointer", "Refusal", "order", "send_checkpoint"]


class Checkpointer(Protocol):
    """``amazon_kclpy.kcl.Checkpointer``: a synchronous round trip to the daemon."""

    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


class CheckpointFailure(StrEnum):
    """Why the daemon refused a checkpoint (the exception name kclpy hands over), and what follows."""

    THROTTLED = "ThrottlingException"  #: retry with backoff; if it persists, checkpoint later
    DEPENDENCY = "KinesisClientLibDependencyException"  #: the lease table is unreachable: as throttled
    LEASE_LOST = "ShutdownException"  #: another worker owns the shard: stop checkpointing
    INVALID_STATE = "InvalidStateException"  #: the KCL cannot checkpoint this shard any more: as lost
    UNKNOWN = "unknown"  #: anything else (e.g. an invalid sequence number): logged, checkpoint later

    @classmethod
    def of(cls, error: BaseException) -> CheckpointFailure:
        name = str(getattr(error, "value", "") or "")
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN

    @property
    def retryable(self) -> bool:
        return self in (CheckpointFailure.THROTTLED, CheckpointFailure.DEPENDENCY)

    @property
    def lease_gone(self) -> bool:
        return self in (CheckpointFailure.LEASE_LOST, CheckpointFailure.INVALID_STATE)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A checkpoint the daemon still refused after the retries: why, and what kclpy said."""

    failure: CheckpointFailure
    detail: Any


def order(position: tuple[str, int]) -> tuple[int, int]:
    """A (sequence number, sub-sequence number) position as something ordered (numbers, not text)."""
    return int(position[0]), position[1]


def send_checkpoint(
    checkpointer: Checkpointer,
    sequence: str | None,
    sub: int | None,
    *,
    tries: int,
    sleep: Callable[[float], None],
) -> Refusal | None:
    """Checkpoint at ``sequence``/``sub`` (``None``: SHARD_END), retrying a transient refusal up to
    ``tries`` times with backoff from 0.2 s; ``None`` when the daemon accepted it."""
    policy = RetryPolicy(max_attempts=tries, base_delay=0.2, max_delay=2.0)
    try:
        retry(
            lambda: checkpointer.checkpoint(sequence, sub),
            policy,
            retryable=lambda exc: (
                isinstance(exc, kcl.CheckpointError) and CheckpointFailure.of(exc).retryable
            ),
            sleep=sleep,
        )
    except kcl.CheckpointError as exc:
        return Refusal(CheckpointFailure.of(exc), getattr(exc, "value", exc))
    return None
