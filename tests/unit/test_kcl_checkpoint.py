"""Checkpoints under the MultiLangDaemon: retries of a transient refusal, what a refusal means
(qldbstream.runtimes.kcl_checkpoint)."""

from __future__ import annotations

import pytest
from amazon_kclpy import kcl

from qldbstream.runtimes.kcl_checkpoint import CheckpointFailure, Refusal, order, send_checkpoint


class Daemon:
    """Refuses the first checkpoints with the given exception names, then accepts."""

    def __init__(self, *refusals: str) -> None:
        self.refusals = list(refusals)
        self.asked: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self.asked.append((sequence_number, sub_sequence_number))
        if self.refusals:
            raise kcl.CheckpointError(self.refusals.pop(0))


def test_a_throttled_checkpoint_is_retried_with_backoff_until_accepted() -> None:
    daemon, slept = Daemon("ThrottlingException", "KinesisClientLibDependencyException"), []
    assert send_checkpoint(daemon, "42", 3, tries=6, sleep=slept.append) is None
    assert daemon.asked == [("42", 3)] * 3 and len(slept) == 2 and all(0 < s <= 2.0 for s in slept)


def test_a_persistent_throttle_is_returned_after_the_tries() -> None:
    daemon = Daemon(*["ThrottlingException"] * 5)
    refusal = send_checkpoint(daemon, None, None, tries=3, sleep=lambda s: None)  # SHARD_END
    assert refusal == Refusal(CheckpointFailure.THROTTLED, "ThrottlingException")
    assert refusal.failure.retryable and not refusal.failure.lease_gone and len(daemon.asked) == 3


@pytest.mark.parametrize(
    ("name", "failure"),
    [
        ("ShutdownException", CheckpointFailure.LEASE_LOST),
        ("InvalidStateException", CheckpointFailure.INVALID_STATE),
        ("KinesisClientLibIOException", CheckpointFailure.UNKNOWN),
    ],
)
def test_a_refusal_that_is_not_transient_is_returned_at_once(name: str, failure: CheckpointFailure) -> None:
    daemon = Daemon(name)
    refusal = send_checkpoint(daemon, "7", 0, tries=6, sleep=lambda s: None)
    assert refusal is not None and refusal.failure is failure and refusal.detail == name
    assert len(daemon.asked) == 1
    assert refusal.failure.lease_gone is (
        failure in (CheckpointFailure.LEASE_LOST, CheckpointFailure.INVALID_STATE)
    )


def test_positions_are_ordered_as_numbers() -> None:
    assert order(("9", 5)) < order(("10", 0)) < order(("10", 1))
