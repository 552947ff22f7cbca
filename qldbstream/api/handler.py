"""The handler plugin API: what the pipeline calls, and what a handler gets to work with.

A handler receives the verified journal records routed to it, in stream order, a batch at a
time. Its lifecycle:

============================  ===========================================================
``setup(ctx)``                once, before the first batch (open clients, load models)
``handle_batch(records, ctx)``  the records of one shard's batch that this handler wants
``flush(ctx)``                before every checkpoint: persist what ``handle_batch`` buffered.
                              If it raises, the checkpoint does not move past the batch.
``shard_released(shard_id)``  the runtime no longer owns the shard (lease lost, shard ended)
``close()``                   once, at shutdown
============================  ===========================================================

Failures: ``handle_batch`` may raise :class:`BatchItemError` to say *which* record failed (the
records before it are done); any other exception means the whole batch failed and the pipeline
narrows it down. The exception's class decides what happens next (see
:mod:`qldbstream.pipeline.reliability`): :class:`~qldbstream.core.errors.RetryableError` and transient I/O
errors are retried and then halt the shard; :class:`~qldbstream.core.errors.PoisonRecordError`
dead-letters the record at once; anything else is retried and then dead-lettered.

Delivery is at least once, with per-handler de-duplication in front: a handler whose side
effects are idempotent (keyed by document id and version, or block sequence number) gets
exactly-once effects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from qldbstream.api.metrics import Metrics, NullMetrics
from qldbstream.core.decode import JournalRecord
from qldbstream.core.records import Position

__all__ = ["BatchItemError", "Handler", "HandlerContext", "SetupContext"]


class BatchItemError(Exception):
    """Raised by ``handle_batch``: ``records[index]`` failed with ``cause``; those before it are done."""

    def __init__(self, index: int, cause: BaseException, route: str | None = None) -> None:
        super().__init__(f"record {index} failed in {route or 'the handler'}: {cause!r}")
        self.index = index
        self.cause = cause
        self.route = route


@dataclass(frozen=True, slots=True)
class SetupContext:
    """What ``setup`` gets: the handler's own validated settings and the shared services."""

    settings: dict[str, Any]
    logger: logging.Logger
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """Per-call context. ``for_record`` gives a copy positioned on one record."""

    handler: str
    shard_id: str | None
    #: 1 on the first delivery of this batch to this handler, then 2, 3, ... on retries
    attempt: int = 1
    #: ``clock()`` value by which the work must be done (``None``: no deadline)
    deadline: float | None = None
    position: Position | None = None
    record_index: int | None = None
    #: The record is older than one already delivered for its document (late-revision policy).
    late: bool = False
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("qldbstream.handler")
    )
    metrics: Metrics = field(default_factory=NullMetrics)
    #: Lambda tumbling windows: the state carried between invocations of one window (mutable).
    window_state: dict[str, Any] | None = None
    #: The handler may mark records late individually: indexes into the batch.
    late_indexes: frozenset[int] = frozenset()
    #: The guarantee the records carry (docs/delivery.md): ``verified`` (every check that covers
    #: them passed), ``chain-confirmed`` (and the next block confirmed their block), or
    #: ``observe-only`` (``verification_action = deliver``: delivered whatever the checks said)
    delivery: str = "verified"
    #: The clock ``deadline`` is read against: the pipeline's (or the runtime's) injected clock,
    #: so that ``remaining_time`` agrees with the deadline the pipeline enforces.
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def remaining_time(self) -> float | None:
        """Seconds left before the deadline by :attr:`clock` (``None`` when there is none)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def for_record(self, record: JournalRecord, index: int) -> HandlerContext:
        """A copy positioned on ``records[index]`` (``position``, ``record_index``, ``late``)."""
        return replace(self, position=record.position, record_index=index, late=index in self.late_indexes)


class Handler:
    """Base class for handler plugins; every method but ``handle_batch`` has a no-op default."""

    #: Unique among the app's handlers; used in de-duplication keys, metrics and the DLQ.
    name: str = "handler"
    #: What this handler gets when a revision is older than one already delivered to it:
    #: ``None`` follows the app's ``late_policy`` (``deliver-late``: delivered with ``ctx.late``);
    #: a handler that only wants each document's newest version (a state mirror) declares
    #: ``"drop"``; ``"reorder"`` holds a revision briefly for the versions before it.
    late_policy: str | None = None
    #: Exception types this handler knows to be transient (a sink throttling, a timeout): the
    #: pipeline retries the batch with backoff and, when retries run out, halts the shard at the
    #: record (the checkpoint holds; the record is delivered again later). Checked before the
    #: built-in classification.
    retryable_errors: tuple[type[BaseException], ...] = ()
    #: Exception types that mean "this record can never succeed" (data the handler cannot take):
    #: the pipeline dead-letters the record at once, without retrying, and goes on with the next.
    #: Checked first, before ``retryable_errors``.
    poison_errors: tuple[type[BaseException], ...] = ()

    def setup(self, ctx: SetupContext) -> None:
        """Called once before the first batch."""

    def wants(self, record: JournalRecord) -> bool:
        """Whether this handler takes ``record`` at all (cheap; called for every record)."""
        return True

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        """Process ``records`` (in stream order). Raise :class:`BatchItemError` to name a failure."""
        raise NotImplementedError

    def flush(self, ctx: HandlerContext) -> None:
        """Persist buffered work before the checkpoint moves."""

    def shard_released(self, shard_id: str) -> None:
        """The runtime gave up ``shard_id`` (lease lost or shard ended): drop per-shard state."""

    def close(self) -> None:
        """Called once at shutdown."""
