"""What a :class:`~qldbstream.pipeline.batch.Pipeline` is told: its settings and the action on a failed check.

:class:`PipelineSettings` is built from the application's settings
(:meth:`qldbstream.app.config.Settings.pipeline_settings`) or by hand in tests; the defaults are
the seed design's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.gate import Delivery
from qldbstream.pipeline.reliability import RetryPolicy

__all__ = ["PipelineSettings", "VerificationAction"]


class VerificationAction(StrEnum):
    DEAD_LETTER = "dead-letter"  #: a record failing a check goes to the DLQ, handlers never see it
    HALT = "halt"  #: stop the shard: an operator must look
    DELIVER = "deliver"  #: observe-only: deliver anyway (failures are still counted and logged)


@dataclass(frozen=True)
class PipelineSettings:
    stop_on_first_failure: bool = True
    verification_action: VerificationAction = VerificationAction.DEAD_LETTER
    #: what a revision older than one already delivered gets: delivered with ``ctx.late`` by default
    #: (a handler that wants only the newest version declares ``late_policy = LatePolicy.DROP``)
    late_policy: LatePolicy = LatePolicy.DELIVER_LATE
    reorder_window: float = 30.0
    #: ``verified``: every check that covers a record passed; ``chain-confirmed``: and the next
    #: block's link confirmed its block (see :mod:`qldbstream.core.gate`)
    delivery: Delivery = Delivery.VERIFIED
    #: seconds a record may wait for its block summary (or the confirming link) before it is
    #: dead-lettered as unverifiable
    max_wait: float = 600.0
    #: records parked in memory at most (beyond: the shard halts and is read again later)
    max_parked: int = 100_000
    #: journal order (a pipeline built with ``journal_order``): seconds a block waits for its
    #: predecessor before the gap is given up (qldbstream.core.order)
    gap_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_failures: int = 5
    breaker_recovery: float = 60.0
    breaker_trials: int = 3
    #: stop before the deadline with this many seconds left (Lambda timeouts)
    deadline_margin: float = 1.0
