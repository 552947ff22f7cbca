"""The KCL record processor: qldbstream's pipeline as an amazon-kclpy v3 processor for one shard.

The MultiLangDaemon hands over user records (it deaggregates KPL records itself); each keeps its
sub-sequence number (:func:`kinesis_record`), so the checkpoint - exactly ``result.checkpoint`` -
names the last finished user record. The daemon never delivers a record twice: the unfinished ones,
from ``result.first_unfinished`` on, stay in :attr:`KclRecordProcessor.pending` and are fed again
(what follows a batch is :class:`~qldbstream.pipeline.shard_policy.ShardPolicy`'s, as in every
runtime). The process around it and the whole table of what happens next:
:mod:`qldbstream.runtimes.kcl`; checkpoints and their retries: :mod:`qldbstream.runtimes.kcl_checkpoint`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from amazon_kclpy.v3 import processor

from qldbstream.api.handler import Handler
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.runtime_duties import flush_metrics, gauge_lag, iterator_age_ms, release_shard
from qldbstream.pipeline.shard_policy import ShardPolicy, breaker_wait
from qldbstream.runtimes.kcl_checkpoint import Checkpointer, order, send_checkpoint

__all__ = ["KclRecord", "KclRecordProcessor", "ParentGone", "ProcessorOptions", "kinesis_record"]

log = logging.getLogger("qldbstream.kcl")

#: Seconds between parent checks while a call blocks (shard end, a full backlog).
_BLOCKING_SLICE = 1.0
#: How often a shard with records held back by the reorder policy is driven again.
_HOLD_POLL = 1.0


class KclRecord(Protocol):
    """What the adapter reads from an ``amazon_kclpy.messages.Record``."""

    @property
    def binary_data(self) -> bytes: ...
    @property
    def sequence_number(self) -> str: ...
    @property
    def sub_sequence_number(self) -> int | None: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def timestamp_millis(self) -> int: ...


@dataclass(frozen=True)
class ProcessorOptions:
    """How the processor re-delivers unfinished records and retries checkpoints (seconds)."""

    #: Per ``processRecords`` call: how long to keep retrying unfinished records before answering.
    call_budget: float = 5.0
    #: Backoff between tries of a halted batch: ``halt_backoff`` doubling up to ``halt_backoff_cap``.
    halt_backoff: float = 0.5
    halt_backoff_cap: float = 30.0
    #: Unfinished user records kept at most; beyond it a call blocks until they drain.
    max_pending: int = 20_000
    #: Tries of one throttled checkpoint within a call, with backoff from 0.2 s.
    checkpoint_tries: int = 6

    def __post_init__(self) -> None:
        if self.call_budget < 0 or self.halt_backoff <= 0 or self.halt_backoff_cap < self.halt_backoff:
            raise ConfigurationError("KCL processor: need call_budget >= 0 and 0 < halt_backoff <= cap")
        if self.max_pending < 1 or self.checkpoint_tries < 1:
            raise ConfigurationError("KCL processor: max_pending and checkpoint_tries must be >= 1")


def kinesis_record(record: KclRecord, shard_id: str | None, source: str = "") -> KinesisRecord:
    """One KCL user record as the pipeline's input; its sub-sequence number is kept for the checkpoint.

    ``approximate_arrival_timestamp`` comes from ``timestamp_millis`` (epoch milliseconds), not from
    kclpy's ``approximate_arrival_timestamp``, a naive local-time datetime.
    """
    return KinesisRecord(
        record.binary_data,
        record.sequence_number,
        record.partition_key or "",
        shard_id,
        record.timestamp_millis / 1000.0,
        None,
        None,
        source or f"kcl {shard_id}",
        int(record.sub_sequence_number or 0),
    )


class ParentGone(Exception):
    """The daemon died while a call was blocking: nobody is left to answer."""


@dataclass(eq=False)
class KclRecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]  # kclpy has no type hints
    """The amazon-kclpy v3 processor for one shard (one process per lease); see the module docstring.

    ``clock``/``sleep``/``wall_clock`` are injectable (tests); ``parent_alive`` tells whether the daemon
    still runs.
    """

    pipeline: Pipeline
    handlers: Sequence[Handler] = ()
    options: ProcessorOptions = field(default_factory=ProcessorOptions)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    parent_alive: Callable[[], bool] = lambda: True
    #: epoch seconds, for the iterator age (``clock`` may be monotonic)
    wall_clock: Callable[[], float] = time.time

    shard_id: str | None = field(default=None, init=False)
    #: User records delivered but not finished, in order: tried again before any newer record.
    pending: list[KinesisRecord] = field(default_factory=list, init=False)
    #: The pipeline holds records back for this shard (reorder policy): drive it on empty calls too.
    holding: bool = field(default=False, init=False)
    #: The last position the daemon accepted, and a finished one it has not accepted yet.
    checkpointed: tuple[str, int] | None = field(default=None, init=False)
    unsaved: tuple[str, int] | None = field(default=None, init=False)
    lease_gone: bool = field(default=False, init=False)
    #: the shard's halts and what follows a batch (qldbstream.pipeline.shard_policy, shared by the runtimes)
    policy: ShardPolicy = field(default_factory=lambda: ShardPolicy(None), init=False)
    next_try_at: float = field(default=0.0, init=False)
    last_result: BatchResult | None = field(default=None, init=False)

    version = 3  # the amazon-kclpy processor API version (KCLProcess dispatches on it)

    # --- the five v3 callbacks ---------------------------------------------------------------------

    def initialize(self, initialize_input: Any) -> None:
        """Remember the shard; the daemon resumes after ``initialize_input.sequence_number``."""
        self.shard_id = str(initialize_input.shard_id)
        self.pending, self.holding, self.lease_gone = [], False, False
        self.policy = ShardPolicy(
            self.shard_id,
            self.options.halt_backoff,
            self.options.halt_backoff_cap,
            self.clock,
            self._breaker_wait,
        )
        self.checkpointed = self.unsaved = None
        self.next_try_at = 0.0
        log.info(
            "shard %s: processing from %s/%s",
            self.shard_id,
            initialize_input.sequence_number,
            initialize_input.sub_sequence_number,
        )

    def process_records(self, process_records_input: Any) -> None:
        """Queue the batch behind unfinished records, drive the pipeline, checkpoint what finished."""
        records: Sequence[KclRecord] = process_records_input.records or ()
        if self.lease_gone:
            if records:
                log.warning("shard %s: lease lost; ignoring %d records", self.shard_id, len(records))
            return
        source = f"kcl {self.shard_id}"
        self.pending.extend(kinesis_record(r, self.shard_id, source) for r in records)
        self._observe(records, process_records_input.millis_behind_latest)
        checkpointer: Checkpointer = process_records_input.checkpointer
        self._drive(checkpointer, self.clock() + self.options.call_budget, back_pressure=True)
        self._flush_metrics()

    def shard_ended(self, shard_ended_input: Any) -> None:
        """Finish everything (blocking, retrying), then checkpoint SHARD_END and release the shard."""
        checkpointer: Checkpointer = shard_ended_input.checkpointer
        if not self.lease_gone:
            self._drive(checkpointer, None)
        if not self.lease_gone and self.pipeline.waiting(self.shard_id):
            # records parked in this process's memory for a block summary that another shard's
            # process reads: nothing here can release them any more - decide them now (dead-letter
            # as unverifiable, with their bytes). A DynamoDB gate store parks them durably instead.
            drained = self.pipeline.drain()
            cp = drained.other_checkpoints.get(self.shard_id)
            if cp is not None:
                self._checkpoint(checkpointer, cp)
            if self.pipeline.waiting(self.shard_id):
                log.error(
                    "shard %s: records still wait for their block summaries (the DLQ is down?); the "
                    "shard end is not checkpointed, the next owner reads them again",
                    self.shard_id,
                )
                self._release()
                return
        if not self.lease_gone:
            self._checkpoint(checkpointer, None, shard_end=True)
        self._release()

    def lease_lost(self, lease_lost_input: Any) -> None:
        """Never checkpoint: drop this shard's unfinished records (the new owner re-reads them)."""
        if self.pending:
            log.warning(
                "shard %s: lease lost with %d unfinished records; the new owner reads them again",
                self.shard_id,
                len(self.pending),
            )
        self.lease_gone = True
        self.pending, self.holding = [], False
        self._release()

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        """One bounded try at the unfinished records, then checkpoint what is finished."""
        if self.lease_gone:
            return
        checkpointer: Checkpointer = shutdown_requested_input.checkpointer
        self._drive(checkpointer, self.clock() + self.options.call_budget)
        if self.unsaved is not None and not self.lease_gone:
            self._checkpoint(checkpointer, self.unsaved)

    # --- driving the pipeline ----------------------------------------------------------------------

    def _observe(self, records: Sequence[KclRecord], millis_behind_latest: Any) -> None:
        """``stream_lag_ms`` (the daemon's MillisBehindLatest) and ``iterator_age_ms`` (newest record)."""
        lag = float(millis_behind_latest) if isinstance(millis_behind_latest, int | float) else None
        age = iterator_age_ms(self.wall_clock(), records[-1].timestamp_millis / 1000) if records else None
        gauge_lag(self.pipeline.metrics, self.shard_id or "", lag, age)

    def _flush_metrics(self) -> None:
        """Per-call metric backends (EMF) write what they have; under the KCL that lands on stderr."""
        flush_metrics(self.pipeline.metrics, log)

    def _over_capacity(self) -> bool:
        return len(self.pending) > self.options.max_pending

    def _drive(
        self, checkpointer: Checkpointer, deadline: float | None, *, back_pressure: bool = False
    ) -> None:
        """Try the unfinished records until none is left or the lease is gone.

        With a ``deadline``, return once it has passed, or when the next try is due only after it (a
        later call tries again); records held back by the reorder policy are left to later calls.
        Without one - or, with ``back_pressure``, while more than ``max_pending`` records wait - block
        until they are finished.
        """
        if self.unsaved is not None:
            self._checkpoint(checkpointer, self.unsaved)
        while not self.lease_gone and (self.pending or self.holding):
            limit = None if back_pressure and self._over_capacity() else deadline
            wait = self.next_try_at - self.clock()
            if wait > 0:
                if limit is not None and (not self.pending or self.clock() + wait > limit):
                    return
                self._wait(wait)
                continue
            self._attempt(checkpointer)
            if limit is not None and self.clock() >= limit:
                return

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` in slices; raise :class:`_ParentGone` if the daemon died meanwhile."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if not self.parent_alive():
                raise ParentGone
            self.sleep(min(left, _BLOCKING_SLICE))

    @property
    def halts(self) -> int:
        """Halts in a row (0 once a batch made progress)."""
        return self.policy.halts

    def _attempt(self, checkpointer: Checkpointer) -> None:
        """One run of the unfinished records through the pipeline; checkpoint; keep what is unfinished."""
        records = self.pending
        result = self.policy.run(self.pipeline, records)  # an exception is a halt: the records stay
        self.last_result = result
        log.debug(
            "shard %s: %d records, %d user records, %d finished, checkpoint %s, halted %s, delivered %s",
            self.shard_id,
            len(records),
            result.user_records,
            result.finished,
            result.checkpoint,
            result.halted,
            result.delivered,
        )
        step = self.policy.after(records, result)
        if step.checkpoint is not None:
            self._checkpoint(checkpointer, step.checkpoint)
        # what is unfinished is fed again; what waits inside the pipeline is its own to release
        self.pending = list(records[step.again_from :]) if step.again_from is not None else []
        self.holding = step.waiting_inside
        if step.halted:
            self.next_try_at = self.clock() + step.delay
            log.warning(
                "shard %s halted (%s): %d records unfinished, trying again in %.1f s",
                self.shard_id,
                step.reason,
                len(self.pending),
                step.delay,
            )
        else:
            self.next_try_at = self.clock() + (_HOLD_POLL if self.holding and not self.pending else 0.0)

    def _breaker_wait(self) -> float:
        """Seconds until every open circuit breaker lets a trial through."""
        return breaker_wait(self.pipeline)

    # --- checkpoints --------------------------------------------------------------------------------

    def _checkpoint(
        self, checkpointer: Checkpointer, position: tuple[str, int] | None, *, shard_end: bool = False
    ) -> bool:
        """Checkpoint ``position`` (or SHARD_END) with retries; True when the daemon accepted it."""
        if not shard_end:
            assert position is not None
            if self.checkpointed is not None and order(position) <= order(self.checkpointed):
                self.unsaved = None
                return True
            self.unsaved = position
        sequence, sub = (None, None) if position is None or shard_end else position
        refusal = send_checkpoint(
            checkpointer, sequence, sub, tries=self.options.checkpoint_tries, sleep=self.sleep
        )
        if refusal is not None:
            what = "SHARD_END" if shard_end else f"{sequence}/{sub}"
            if refusal.failure.lease_gone:
                log.warning(
                    "shard %s: checkpoint at %s refused (%s): the lease is gone",
                    self.shard_id,
                    what,
                    refusal.failure.value,
                )
                self.lease_gone = True
                self.pending, self.holding = [], False
                return False
            log.error(
                "shard %s: checkpoint at %s failed (%s, %r); it will be tried again later",
                self.shard_id,
                what,
                refusal.failure.value,
                refusal.detail,
            )
            return False
        if not shard_end:
            self.checkpointed, self.unsaved = position, None
        else:
            log.info("shard %s: checkpointed SHARD_END; its children may start", self.shard_id)
        return True

    def _release(self) -> None:
        """Tell every handler the shard is no longer ours (each one hears it, even if another fails)."""
        if self.shard_id is not None:
            release_shard(self.handlers, self.shard_id, log)
