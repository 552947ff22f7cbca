"""The KCL record processor: qldbstream's pipeline as an amazon-kclpy v3 processor under the MultiLangDaemon.

::

    MultiLangDaemon (JVM): leases, GetRecords, KPL deaggregation, checkpoints in its lease table
        │  starts one ``python -m qldbstream.kcl`` per leased shard; JSON lines on its stdin/stdout
        ▼
    KclRecordProcessor ─► Pipeline.process(shard, unfinished + new user records) ─► checkpoint

The daemon hands over user records (it deaggregates KPL records itself); each keeps its sub-sequence
number, so the checkpoint - exactly ``result.checkpoint`` - names the last finished user record.
What happens next (docs/kcl.md has the whole table):

* a **halted** batch (breaker open, sink or DLQ down, the pipeline raising): the daemon never
  delivers a record twice, so the unfinished records - from ``result.first_unfinished`` on - stay in
  this process and are tried again with backoff, within a call while its budget lasts and on every
  later call (``callProcessRecordsEvenForEmptyRecordList`` keeps calls coming on an idle shard); new
  records queue behind them, and beyond ``max_pending`` a call blocks until they drain;
* ``shardEnded`` blocks until everything is finished, then checkpoints ``SHARD_END``;
  ``leaseLost`` never checkpoints; ``shutdownRequested`` checkpoints what is finished; a checkpoint
  refused with ``ShutdownException``/``InvalidStateException`` stops all checkpointing;
* an exception escaping the adapter is logged and the process exits (status 70) instead of kclpy
  swallowing it; the daemon then exits too and every shard resumes from its last checkpoint;
* stdout is the protocol's alone: :func:`isolate_stdio` gives kclpy a private copy and sends fd 1
  (``print``, C extensions, child processes) to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any, Protocol

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

from qldbstream.api.handler import Handler
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.reliability import RetryPolicy, retry
from qldbstream.pipeline.shard_policy import ShardPolicy

if TYPE_CHECKING:
    from qldbstream.app.assembly import App

__all__ = [
    "EXIT_ADAPTER_BUG",
    "CheckpointFailure",
    "GuardedKCLProcess",
    "KclRecordProcessor",
    "ProcessorOptions",
    "kinesis_record",
    "main",
]

log = logging.getLogger("qldbstream.kcl")

#: Exit status when an exception escapes the adapter (the daemon then exits and is restarted).
EXIT_ADAPTER_BUG = 70
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


def _position(checkpoint: tuple[str, int]) -> tuple[int, int]:
    return int(checkpoint[0]), checkpoint[1]


class _ParentGone(Exception):
    """The daemon died while a call was blocking: nobody is left to answer."""


@dataclass(eq=False)
class KclRecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]  # kclpy has no type hints
    """The amazon-kclpy v3 processor for one shard (one process per lease); see the module docstring.

    ``clock``/``sleep`` are injectable (tests); ``parent_alive`` tells whether the daemon still runs.
    """

    pipeline: Pipeline
    handlers: Sequence[Handler] = ()
    options: ProcessorOptions = field(default_factory=ProcessorOptions)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    parent_alive: Callable[[], bool] = lambda: True

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
        metrics, shard = self.pipeline.metrics, self.shard_id or ""
        if isinstance(millis_behind_latest, int | float):
            metrics.gauge("stream_lag_ms", float(millis_behind_latest), shard=shard)
        if records:
            age = time.time() * 1000 - records[-1].timestamp_millis
            metrics.gauge("iterator_age_ms", max(0.0, age), shard=shard)

    def _flush_metrics(self) -> None:
        """Per-call metric backends (EMF) write what they have; under the KCL that lands on stderr."""
        flush = getattr(self.pipeline.metrics, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception:  # metrics must never stop a shard
                log.exception("flushing metrics failed")

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
                raise _ParentGone
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
        return max((b.retry_after() for b in self.pipeline.breakers.values()), default=0.0)

    # --- checkpoints --------------------------------------------------------------------------------

    def _checkpoint(
        self, checkpointer: Checkpointer, position: tuple[str, int] | None, *, shard_end: bool = False
    ) -> bool:
        """Checkpoint ``position`` (or SHARD_END) with retries; True when the daemon accepted it."""
        if not shard_end:
            assert position is not None
            if self.checkpointed is not None and _position(position) <= _position(self.checkpointed):
                self.unsaved = None
                return True
            self.unsaved = position
        sequence: str | None = None
        sub: int | None = None
        if position is not None and not shard_end:
            sequence, sub = position
        policy = RetryPolicy(max_attempts=self.options.checkpoint_tries, base_delay=0.2, max_delay=2.0)
        try:
            retry(
                lambda: checkpointer.checkpoint(sequence, sub),
                policy,
                retryable=lambda exc: (
                    isinstance(exc, kcl.CheckpointError) and CheckpointFailure.of(exc).retryable
                ),
                sleep=self.sleep,
            )
        except kcl.CheckpointError as exc:
            failure = CheckpointFailure.of(exc)
            what = "SHARD_END" if shard_end else f"{sequence}/{sub}"
            if failure.lease_gone:
                log.warning(
                    "shard %s: checkpoint at %s refused (%s): the lease is gone",
                    self.shard_id,
                    what,
                    failure.value,
                )
                self.lease_gone = True
                self.pending, self.holding = [], False
                return False
            log.error(
                "shard %s: checkpoint at %s failed (%s, %r); it will be tried again later",
                self.shard_id,
                what,
                failure.value,
                getattr(exc, "value", exc),
            )
            return False
        if not shard_end:
            self.checkpointed, self.unsaved = position, None
        else:
            log.info("shard %s: checkpointed SHARD_END; its children may start", self.shard_id)
        return True

    def _release(self) -> None:
        """Tell every handler the shard is no longer ours (each one hears it, even if another fails)."""
        if self.shard_id is None:
            return
        for handler in self.handlers:
            try:
                handler.shard_released(self.shard_id)
            except Exception:  # every handler must hear it; the error is logged, not hidden
                log.exception("handler %s failed in shard_released(%s)", handler.name, self.shard_id)


class GuardedKCLProcess(kcl.KCLProcess):  # type: ignore[misc]  # kclpy has no type hints
    """``KCLProcess`` that does not swallow processor exceptions: it logs them and exits (status 70).

    kclpy's own ``_perform_action`` prints the traceback and answers "done", as if the records had been
    processed; exiting instead makes the daemon restart the shard from its last checkpoint.
    """

    def _perform_action(self, action: Any) -> None:
        try:
            action.dispatch(self.checkpointer, self.processor)
        except _ParentGone:
            log.error("the MultiLangDaemon is gone; exiting")
            raise SystemExit(EXIT_ADAPTER_BUG) from None
        except Exception:
            log.critical(
                "unexpected error handling %r; exiting so the daemon restarts the shard",
                action.action,
                exc_info=True,
            )
            raise SystemExit(EXIT_ADAPTER_BUG) from None


# --- the process the daemon starts ---------------------------------------------------------------


def isolate_stdio() -> tuple[IO[str], IO[str]]:
    """Reserve stdin/stdout for the protocol: return private copies; fds 0/1 become /dev/null/stderr.

    After this, ``print`` (``sys.stdout`` is ``sys.stderr``), C extensions and child processes that
    write to fd 1 land on stderr, and nothing but kclpy can read the daemon's messages.
    """
    sys.stdout.flush()
    protocol_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # sys.stdin (still fd 0) now reads nothing
    os.close(devnull)
    sys.stdout = sys.stderr  # the old object stays alive in sys.__stdout__ and writes to fd 1 = stderr
    return protocol_in, protocol_out


def _options(argv: Sequence[str] | None) -> tuple[ProcessorOptions, str | None]:
    d = ProcessorOptions()
    p = argparse.ArgumentParser(
        prog="python -m qldbstream.kcl",
        description="The qldbstream record processor the KCL MultiLangDaemon starts per shard "
        "(executableName); configuration comes from QLDBSTREAM_* / QLDBSTREAM_CONFIG.",
    )
    p.add_argument("--config", help="configuration file (default: $QLDBSTREAM_CONFIG)")
    p.add_argument("--call-budget", type=float, default=d.call_budget, help="seconds per call for retries")
    p.add_argument("--halt-backoff", type=float, default=d.halt_backoff, help="first retry delay (s)")
    p.add_argument(
        "--halt-backoff-cap", type=float, default=d.halt_backoff_cap, help="longest retry delay (s)"
    )
    p.add_argument("--max-pending", type=int, default=d.max_pending, help="unfinished records kept at most")
    a = p.parse_args(argv)
    try:
        options = ProcessorOptions(a.call_budget, a.halt_backoff, a.halt_backoff_cap, a.max_pending)
    except ConfigurationError as exc:
        p.error(str(exc))
    return options, a.config


def build_processor(app: App, options: ProcessorOptions) -> KclRecordProcessor:
    """The processor over ``app``'s pipeline and handlers, watching this process's parent (the daemon)."""
    parent = os.getppid()
    return KclRecordProcessor(
        app.pipeline(), app.handlers, options, parent_alive=lambda: os.getppid() == parent
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one shard's processor until the daemon closes stdin; the exit status says how it ended.

    0: the daemon ended the conversation; 2: bad configuration (logged; the daemon then exits);
    70: an unexpected error (logged, see :class:`GuardedKCLProcess`).
    """
    options, config_file = _options(argv)  # --help and usage errors print before stdout is taken over
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the daemon's to handle
    protocol_in, protocol_out = isolate_stdio()
    from qldbstream.app.assembly import App
    from qldbstream.io.logs import configure_logging

    configure_logging()
    try:
        app = App.from_env(config_file=config_file)  # configures logging as the settings say
        processor_ = build_processor(app, options)
        app.warn_if_stores_in_memory("the KCL record processor")
    except ConfigurationError as exc:
        log.error("configuration: %s", exc)
        return 2
    try:
        GuardedKCLProcess(
            processor_, input_file=protocol_in, output_file=protocol_out, error_file=sys.stderr
        ).run()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        app.close()
        _mark_prometheus_process_dead()
    return 0


def _mark_prometheus_process_dead() -> None:
    """Under ``metrics = prometheus:PORT`` the launcher aggregates the processors' files: drop our gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    sys.exit(main())
