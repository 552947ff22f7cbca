"""The AWS Lambda runtime: one Kinesis event source mapping batch in, a partial batch response out.

Deploy with the handler string ``qldbstream.aws_lambda.handler``: it is configured by the
environment alone (:func:`app_from_env`) and reused by the container. When it is the function's
handler (Lambda sets ``_HANDLER`` to it), the app is built when this module is imported - Lambda's
init phase, before the first event; a configuration error found then is logged, and raised again
with the same one-line message by the first invocation (which tries again). Code that assembles
its own app uses the factory instead::

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

The event's records and the response are read and written by :mod:`~qldbstream.runtimes.lambda_batch`;
tumbling windows (``state``, the ``window_closed`` hooks) by :mod:`~qldbstream.runtimes.lambda_windows`.
See ``docs/lambda.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from qldbstream.app.assembly import App
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.runtime_duties import flush_metrics
from qldbstream.pipeline.shard_policy import stuck_record
from qldbstream.runtimes.lambda_batch import (
    EVENT_STAGE,
    BatchFailedError,
    Item,
    Malformed,
    by_shard,
    describe,
    identifier,
    response,
)
from qldbstream.runtimes.lambda_windows import TumblingWindow, WindowClosedHandler, close_window

__all__ = [
    "EVENT_STAGE",
    "BatchFailedError",
    "LambdaHandler",
    "TumblingWindow",
    "WindowClosedHandler",
    "app_from_env",
    "configured_handler",
    "handler",
    "make_handler",
]

log = logging.getLogger("qldbstream.aws_lambda")


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
        unfinished: list[Item] = []
        for shard, items in by_shard(event, window).items():
            first = self._process_shard(shard, items, deadline, state)
            if first is not None:
                unfinished.append(first)
                identifiers.append(identifier(first))
        metrics = self.pipeline.metrics
        metrics.incr("batch_item_failures", len(identifiers))
        if unfinished and not self.report_batch_item_failures:
            raise BatchFailedError(
                f"unfinished from {describe(unfinished[0])}; the event source mapping does not report "
                "batch item failures, so the invocation fails and Lambda retries the batch"
            )
        if window is not None and window.closing and not unfinished:
            close_window(self.pipeline, window, deadline, self._clock)
        return response(identifiers, window)

    def _deadline(self, context: Any) -> float | None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            return None  # invoked without a Lambda context (a local run): no deadline
        return self._clock() + float(remaining()) / 1000

    def _out_of_time(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline - self.pipeline.settings.deadline_margin

    def _process_shard(
        self,
        shard: str | None,
        items: list[Item],
        deadline: float | None,
        state: dict[str, Any] | None,
    ) -> Item | None:
        """Run one shard's records in order; return its first unfinished record, if any."""
        stop_mode = self.pipeline.settings.stop_on_first_failure
        first: Item | None = None
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

    def _dead_letter(self, item: Malformed, deadline: float | None) -> bool:
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

    def _flush_metrics(self) -> None:
        """The hook for per-invocation metric backends (EMF): call ``flush()`` when they have one."""
        flush_metrics(self.pipeline.metrics, log)


def make_handler(
    app: App,
    *,
    report_batch_item_failures: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LambdaHandler:
    """A Lambda handler ``(event, context) -> response`` over ``app`` (set up now, reused per call)."""
    return LambdaHandler(app, report_batch_item_failures=report_batch_item_failures, clock=clock, sleep=sleep)


def app_from_env(**app_options: Any) -> App:
    """The app the environment configures (``QLDBSTREAM_*``), as a Lambda function runs it.

    :meth:`App.from_env`: metrics in ``metrics_namespace`` with the ``metrics_dimensions`` (as in
    every runtime); the level from ``AWS_LAMBDA_LOG_LEVEL`` when ``QLDBSTREAM_LOG_LEVEL`` is not
    set (read by the settings); ``log_format=inherit`` leaves the records to the application's
    logging (a Powertools Logger). ``app_options`` go to :class:`App`.
    """
    return App.from_env(**app_options)


@functools.cache
def configured_handler() -> LambdaHandler:
    """The handler configured by the environment: built once (at init in Lambda), then reused.

    A failure is not cached: the next invocation tries again (and fails again with the same
    message until the configuration is fixed). ``configured_handler.cache_clear()`` forgets it.
    """
    try:
        app = app_from_env()
    except ConfigurationError as exc:
        log.error("qldbstream configuration error: %s", exc)
        raise ConfigurationError(f"qldbstream configuration: {exc}") from None
    return LambdaHandler(app)


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The function's handler (``qldbstream.aws_lambda.handler``), configured by the environment."""
    return configured_handler()(event, context)


#: the handler strings that name :func:`handler` (``_HANDLER`` in Lambda's environment)
_HANDLER_STRINGS = ("qldbstream.aws_lambda.handler", "qldbstream.runtimes.aws_lambda.handler")


def _build_at_init() -> None:
    """In Lambda, build the app now - the init phase, not the first invocation's time.

    A failure is logged and left for the first invocation, which builds again and raises the
    error to Lambda (a configuration error as one clear line): the function then fails visibly
    per invocation instead of in a crash loop at init.
    """
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("_HANDLER") not in _HANDLER_STRINGS:
        return  # not in Lambda, or the function's own code (a Powertools processor) builds its app
    try:
        configured_handler()
    except ConfigurationError:
        pass  # logged by configured_handler; raised again by the first invocation
    except Exception as exc:  # the first invocation tries again and raises it
        log.error("qldbstream could not be set up at init (the first invocation tries again): %r", exc)


_build_at_init()
