"""The AWS Lambda runtime: one Kinesis event source mapping batch in, a partial batch response out.

Deploy with the handler string ``qldbstream.aws_lambda.handler``: it is configured by the
environment alone (``App.from_env()``, built on the first invocation and reused by the
container). Code that assembles its own app uses the factory instead::

    from qldbstream.app.assembly import App
    from qldbstream.runtimes.aws_lambda import make_handler
    from qldbstream.app.config import Settings

    handler = make_handler(App(Settings(dlq="sqs:https://..."), handlers=[router]))

One invocation, per shard of the event (a Kinesis batch holds one shard):

1. convert the event's records; a record that cannot be read (bad base64, no ``kinesis``
   object) is poison: it is dead-lettered (stage ``event``) where it stands in the order;
2. run the rest through :meth:`Pipeline.process <qldbstream.pipeline.batch.Pipeline.process>` with
   the invocation's deadline (``context.get_remaining_time_in_millis()``; the pipeline keeps
   its ``deadline_margin`` in reserve) and, for tumbling windows, the window's ``state``;
3. report the **first unfinished Kinesis record** - for a KPL aggregate its own (parent)
   sequence number; Lambda retries from there, and the aggregate's finished user records are
   de-duplicated on redelivery. A record that is neither done nor dead-lettered is never
   reported as a success; an unfinished record without a sequence number cannot be named, so
   the invocation raises :class:`BatchFailedError` and Lambda retries the whole batch.

With tumbling windows the response always carries ``state``; when Lambda closes the window
(``isFinalInvokeForWindow``, or ``isWindowTerminatedEarly``) and every record of the
invocation finished, each handler that defines ``window_closed(window, ctx)`` is called with
the final :class:`TumblingWindow`. See ``docs/lambda.md``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from qldbstream.api.handler import HandlerContext
from qldbstream.app.assembly import App
from qldbstream.core.errors import ConfigurationError, HaltShardError, MalformedKinesisRecordError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.lambda_event import records_from_event
from qldbstream.pipeline.shard_policy import stuck_record

__all__ = [
    "BatchFailedError",
    "LambdaHandler",
    "TumblingWindow",
    "WindowClosedHandler",
    "configured_handler",
    "handler",
    "make_handler",
]

log = logging.getLogger("qldbstream.aws_lambda")

#: The DLQ stage of a record the Lambda event itself could not deliver readable.
EVENT_STAGE = "event"


class BatchFailedError(HaltShardError):
    """The invocation fails on purpose, so that Lambda retries the batch (nothing is checkpointed)."""


@dataclass(frozen=True, slots=True)
class TumblingWindow:
    """The tumbling-window part of an event. ``state`` is the dict handlers see as ``ctx.window_state``."""

    start: str | None
    end: str | None
    shard_id: str | None
    event_source_arn: str | None
    state: dict[str, Any]
    #: ``isFinalInvokeForWindow``: the window is over; Lambda drops the state after this invocation
    final: bool
    #: ``isWindowTerminatedEarly``: the state outgrew 1 MB; the same window goes on with a fresh state
    terminated_early: bool

    @property
    def closing(self) -> bool:
        """Whether Lambda drops this state after the invocation (the ``window_closed`` hooks run)."""
        return self.final or self.terminated_early

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> TumblingWindow | None:
        """The event's window, or ``None`` when the event source mapping has no tumbling window."""
        if not any(k in event for k in ("window", "state", "isFinalInvokeForWindow")):
            return None
        state = event.get("state")
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise BatchFailedError(
                f"the tumbling window's 'state' is a {type(state).__name__}, not an object"
            )
        window = event.get("window")
        bounds = window if isinstance(window, Mapping) else {}
        return cls(
            _text(bounds.get("start")),
            _text(bounds.get("end")),
            _text(event.get("shardId")),
            _text(event.get("eventSourceARN")),
            state,
            event.get("isFinalInvokeForWindow") is True,
            event.get("isWindowTerminatedEarly") is True,
        )


class WindowClosedHandler(Protocol):
    """The optional hook a handler defines to act on a tumbling window's final state.

    Called at most once per closing invocation, after every record of it finished, in handler
    order; it may run again if that invocation is retried, so its effect must be idempotent
    (key it by ``window.shard_id`` and ``window.start``). A failure is retried with the
    pipeline's retry policy, then fails the invocation (Lambda retries the final invocation).
    """

    name: str

    def window_closed(self, window: TumblingWindow, ctx: HandlerContext) -> None: ...


@dataclass(frozen=True, slots=True)
class _Malformed:
    """An event record that could not be converted: the error (with its position) and the raw entry."""

    error: MalformedKinesisRecordError
    entry: Any

    @property
    def sequence_number(self) -> str | None:
        return self.error.position.sequence_number if self.error.position else None

    def kinesis_record(self) -> KinesisRecord:
        """What the envelope records: the ``data`` text exactly as received (it is not valid base64)."""
        entry = self.entry if isinstance(self.entry, Mapping) else {}
        kinesis = entry.get("kinesis")
        kinesis = kinesis if isinstance(kinesis, Mapping) else {}
        data = kinesis.get("data")
        arrival = kinesis.get("approximateArrivalTimestamp")
        position = self.error.position
        return KinesisRecord(
            data.encode("utf-8", "surrogatepass") if isinstance(data, str) else b"",
            self.sequence_number or "",
            str(kinesis.get("partitionKey") or ""),
            position.shard_id if position else None,
            float(arrival) if isinstance(arrival, int | float) else None,
            None,
            _text(entry.get("eventSourceARN")),
            position.source if position else "lambda event",
        )


_Item = KinesisRecord | _Malformed


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _describe(item: _Item) -> str:
    return item.position.describe() if isinstance(item, KinesisRecord) else str(item.error)


class LambdaHandler:
    """A Lambda function handler over one app's pipeline: call it with ``(event, context)``.

    ``report_batch_item_failures=False`` is for an event source mapping without
    ``ReportBatchItemFailures``: an unfinished record then fails the invocation instead of
    being named, because Lambda would take the response for a success.
    """

    def __init__(
        self,
        app: App,
        *,
        report_batch_item_failures: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app = app
        self.pipeline = app.pipeline(allow_hold=False, clock=clock, sleep=sleep)
        app.warn_if_stores_in_memory("Lambda")
        self.report_batch_item_failures = report_batch_item_failures
        self._clock = clock
        self._sleep = sleep

    def __call__(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        try:
            return self._invoke(event, context)
        finally:
            self._flush_metrics()

    # --- one invocation ------------------------------------------------------------------
    def _invoke(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            raise ConfigurationError(
                f"qldbstream.runtimes.aws_lambda expects a Kinesis event (an object with 'Records'), "
                f"not a {type(event).__name__}"
            )
        window = TumblingWindow.of(event)
        state = window.state if window is not None else None
        deadline = self._deadline(context)
        identifiers: list[str] = []
        unfinished: list[_Item] = []
        for shard, items in self._by_shard(event, window).items():
            first = self._process_shard(shard, items, deadline, state)
            if first is not None:
                unfinished.append(first)
                identifiers.append(self._identifier(first))
        metrics = self.pipeline.metrics
        metrics.incr("batch_item_failures", len(identifiers))
        if unfinished and not self.report_batch_item_failures:
            raise BatchFailedError(
                f"unfinished from {_describe(unfinished[0])}; the event source mapping does not report "
                "batch item failures, so the invocation fails and Lambda retries the batch"
            )
        if window is not None and window.closing and not unfinished:
            self._close_window(window, deadline)
        response: dict[str, Any] = {"batchItemFailures": [{"itemIdentifier": i} for i in identifiers]}
        if window is not None:
            response["state"] = state
        return response

    def _deadline(self, context: Any) -> float | None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            return None  # invoked without a Lambda context (a local run): no deadline
        return self._clock() + float(remaining()) / 1000

    def _out_of_time(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline - self.pipeline.settings.deadline_margin

    @staticmethod
    def _by_shard(event: Mapping[str, Any], window: TumblingWindow | None) -> dict[str | None, list[_Item]]:
        """The event's records grouped by shard (``eventID`` prefix), each group in event order."""
        entries = event.get("Records")
        if entries is None and window is not None:
            entries = []  # a window's final invocation may carry no records
        if not isinstance(entries, list):
            raise ConfigurationError(
                "qldbstream.runtimes.aws_lambda expects a Kinesis event: it has no 'Records' list"
            )
        groups: dict[str | None, list[_Item]] = {}
        current = window.shard_id if window is not None else None
        source = {"Records": entries}
        for entry, converted in zip(entries, records_from_event(source), strict=True):
            origin = entry.get("eventSource") if isinstance(entry, Mapping) else None
            if origin is not None and origin != "aws:kinesis":
                raise ConfigurationError(
                    "the qldbstream Lambda handler reads Kinesis event source mappings, "
                    f"not {origin!r} events"
                )
            item: _Item
            if isinstance(converted, KinesisRecord):
                item, shard = converted, converted.shard_id
            else:
                item = _Malformed(converted, entry)
                shard = converted.position.shard_id if converted.position else None
            # a record whose eventID names no shard stays with its neighbours (keeps the order)
            current = shard if shard is not None else current
            groups.setdefault(current, []).append(item)
        return groups

    def _process_shard(
        self,
        shard: str | None,
        items: list[_Item],
        deadline: float | None,
        state: dict[str, Any] | None,
    ) -> _Item | None:
        """Run one shard's records in order; return its first unfinished record, if any."""
        stop_mode = self.pipeline.settings.stop_on_first_failure
        first: _Item | None = None
        segment: list[KinesisRecord] = []
        for item in [*items, None]:
            if isinstance(item, KinesisRecord):
                segment.append(item)
                continue
            if segment:  # the records before a malformed one (or the end) go through the pipeline
                stuck = self._run(shard, segment, deadline, state)
                segment = []
                if stuck is not None:
                    first = stuck if first is None else first
                    if stop_mode:
                        return first
            if item is None:
                break
            if not self._dead_letter(item, deadline):
                first = item if first is None else first
                if stop_mode:
                    return first
        return first

    def _run(
        self,
        shard: str | None,
        records: list[KinesisRecord],
        deadline: float | None,
        state: dict[str, Any] | None,
    ) -> KinesisRecord | None:
        result = self.pipeline.process(shard, records, deadline=deadline, window_state=state)
        if (result.first_unfinished is None) != (result.finished == len(records)):
            raise RuntimeError(
                f"pipeline result is inconsistent for shard {shard}: {result.finished} of {len(records)} "
                f"records finished, first unfinished {result.first_unfinished!r}"
            )
        # the first unfinished record, or one parked in this container's memory only: Lambda must
        # deliver it again (gate_store = dynamodb:<table> parks it durably instead)
        stuck = stuck_record(result, records, durable_gate=self.pipeline.gate_store.durable)
        fields = {"shardId": shard, "records": len(records), "finished": result.finished}
        if stuck is None:
            log.info("shard %s: all %d records finished", shard, len(records), extra=fields)
            return None
        fields.update(sequenceNumber=stuck.sequence_number, haltReason=result.halt_reason)
        log.warning(
            "shard %s: %d of %d records finished; first unfinished: %s (%s)",
            shard,
            result.finished,
            len(records),
            stuck.position.describe(),
            result.halt_reason or "not finished",
            extra=fields,
        )
        return stuck

    def _dead_letter(self, item: _Malformed, deadline: float | None) -> bool:
        """Set a malformed record aside; False when that is not possible (it stays unfinished)."""
        position = item.error.position
        fields = {
            "shardId": position.shard_id if position else None,
            "sequenceNumber": item.sequence_number,
            "source": position.source if position else None,
        }
        metrics = self.pipeline.metrics
        metrics.incr("malformed_records")
        if self._out_of_time(deadline):
            log.warning("no time left to dead-letter %s", item.error, extra=fields)
            return False
        # the pipeline writes it as every dead letter (sealed under masking, DLQ failures counted)
        if not self.pipeline.dead_letter(EVENT_STAGE, item.error, item.kinesis_record()):
            log.error("DLQ write failed for malformed record: %s", item.error, extra=fields)
            return False
        log.warning("malformed record dead-lettered: %s", item.error, extra=fields)
        return True

    @staticmethod
    def _identifier(item: _Item) -> str:
        sequence = item.sequence_number
        if not sequence:
            raise BatchFailedError(
                f"the first unfinished record has no sequence number to report ({_describe(item)}); "
                "the invocation fails so that Lambda retries the whole batch"
            )
        return sequence

    # --- tumbling windows ----------------------------------------------------------------
    def _close_window(self, window: TumblingWindow, deadline: float | None) -> None:
        metrics = self.pipeline.metrics
        for h in self.pipeline.handlers:
            hook = getattr(h, "window_closed", None)
            if not callable(hook):
                continue
            ctx = HandlerContext(
                handler=h.name,
                shard_id=window.shard_id,
                deadline=deadline,
                logger=logging.getLogger(f"qldbstream.handler.{h.name}"),
                metrics=metrics,
                window_state=window.state,
                clock=self._clock,
            )
            try:  # retried as the pipeline retries every handler call (within the deadline)
                self.pipeline.run_hook(
                    h,
                    functools.partial(hook, window, ctx),
                    deadline=deadline,
                    what="window_closed",
                    shard=window.shard_id,
                )
            except Exception as exc:
                metrics.incr("window_hook_failures", handler=h.name)
                raise BatchFailedError(
                    f"window_closed of {h.name} failed for shard {window.shard_id} window "
                    f"{window.start}..{window.end}: {exc!r}; Lambda retries the final invocation"
                ) from exc
            metrics.incr("windows_closed", handler=h.name)

    def _flush_metrics(self) -> None:
        """The hook for per-invocation metric backends (EMF): call ``flush()`` when they have one."""
        flush = getattr(self.pipeline.metrics, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception:  # metrics must not fail the batch; the error is logged
                log.exception("flushing metrics failed")


def make_handler(
    app: App,
    *,
    report_batch_item_failures: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LambdaHandler:
    """A Lambda handler ``(event, context) -> response`` over ``app`` (set up now, reused per call)."""
    return LambdaHandler(app, report_batch_item_failures=report_batch_item_failures, clock=clock, sleep=sleep)


@functools.cache
def configured_handler() -> LambdaHandler:
    """The handler configured by the environment: built on first use, then reused by the container.

    A failure is not cached: the next invocation tries again (and fails again with the same
    message until the configuration is fixed). ``configured_handler.cache_clear()`` forgets it.
    """
    try:
        app = App.from_env()
    except ConfigurationError as exc:
        log.error("qldbstream configuration error: %s", exc)
        raise ConfigurationError(f"qldbstream configuration: {exc}") from None
    logging.getLogger("qldbstream").setLevel(app.settings.log_level.upper())
    return LambdaHandler(app)


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The function's handler (``qldbstream.aws_lambda.handler``), configured by the environment."""
    return configured_handler()(event, context)
