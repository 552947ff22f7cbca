"""A batch processor for AWS Lambda Powertools: ``process_partial_response`` over qldbstream's pipeline.

For a function written with Powertools' batch utility, this processor takes the place of
``BatchProcessor(EventType.KinesisDataStreams)``: the ``record_handler`` is given verified,
de-aggregated, decoded, de-duplicated journal records (:mod:`qldbstream.api` types:
``RevisionDetails``, and ``BlockSummary`` with ``block_summaries=True``) instead of raw Kinesis
records::

    from aws_lambda_powertools.utilities.batch import process_partial_response
    from qldbstream.runtimes.powertools import QldbStreamBatchProcessor

    processor = QldbStreamBatchProcessor()          # settings from the environment, built at init

    def record_handler(revision):                   # a RevisionDetails, already verified
        ...

    def lambda_handler(event, context):
        return process_partial_response(event, record_handler, processor, context)

The whole batch runs through the same :class:`~qldbstream.runtimes.aws_lambda.LambdaHandler` as
``qldbstream.aws_lambda.handler`` - KPL deaggregation, every hash check, the delivery gate,
de-duplication, handler retries and the dead-letter queue - so a record that fails verification
never reaches ``record_handler``: it is dead-lettered (``dlq``) or, without a DLQ, it stops its
shard and is reported. A ``record_handler`` that raises is retried (``retry_max_attempts``), then
dead-lettered when a DLQ is configured, otherwise reported. Failures stop their shard
(``stop_on_first_failure``): the first unfinished Kinesis record and every later record of the
same shard are the processor's ``fail_messages``, and the response names them all - Lambda
resumes the shard from the first of them; records of other shards are unaffected.

Importing this module imports ``aws_lambda_powertools`` (``pip install qldbstream[powertools]``);
``import qldbstream`` never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.batch.base import BasePartialBatchProcessor
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from qldbstream.api import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.api.handler import BatchItemError, Handler, HandlerContext
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.runtimes.aws_lambda import LambdaHandler, app_from_env

__all__ = ["QldbStreamBatchProcessor", "RecordNotFinishedError"]


class RecordNotFinishedError(Exception):
    """A Kinesis record qldbstream did not finish (or one after it, on its shard): Lambda sends it again."""


class _RecordHandler(Handler):
    """The qldbstream handler that calls the ``record_handler`` given to the processor, per record."""

    def __init__(self, name: str, processor: QldbStreamBatchProcessor, block_summaries: bool) -> None:
        self.name = name
        self._processor = processor
        self._block_summaries = block_summaries

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails) or (
            self._block_summaries and isinstance(record, BlockSummary)
        )

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for index, record in enumerate(records):
            try:
                self._processor._call_record_handler(record)
            except Exception as exc:
                raise BatchItemError(index, exc) from exc


class QldbStreamBatchProcessor(BasePartialBatchProcessor):
    """A Powertools batch processor (Kinesis) that runs each batch through qldbstream's pipeline.

    ``settings``: qldbstream's settings; ``None`` reads them from the environment
    (``QLDBSTREAM_*``, as ``qldbstream.aws_lambda.handler`` does: :func:`app_from_env`, with
    ``metrics_namespace``, ``metrics_dimensions``, ``log_format`` and ``AWS_LAMBDA_LOG_LEVEL``).
    ``app_options`` go to :class:`~qldbstream.app.assembly.App` (``dlq``, ``store``,
    ``gate_store``, ``metrics``, ``clients``). ``handler_name`` names the record handler in
    de-duplication keys, metrics and dead letters. Build it once, at module level (Lambda's
    init phase): the app (stores, clients) is reused by every invocation of the container.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        handler_name: str = "record_handler",
        block_summaries: bool = False,
        raise_on_entire_batch_failure: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        **app_options: Any,
    ) -> None:
        super().__init__(
            EventType.KinesisDataStreams, raise_on_entire_batch_failure=raise_on_entire_batch_failure
        )
        adapter = _RecordHandler(handler_name, self, block_summaries)
        if settings is None:
            app = app_from_env(handlers=[adapter], **app_options)
        else:
            app = App(settings, handlers=[adapter], **app_options)
        self.app = app
        self.lambda_handler = LambdaHandler(app, clock=clock, sleep=sleep)
        self._context: Any = None

    def __call__(
        self, records: list[dict[str, Any]], handler: Callable[..., Any], lambda_context: Any = None
    ) -> QldbStreamBatchProcessor:
        # Powertools keeps the last context when none is given: the deadline would be a past one's
        self._context = lambda_context
        super().__call__(records, handler, lambda_context)
        return self

    def _call_record_handler(self, record: JournalRecord) -> Any:
        if getattr(self, "_handler_accepts_lambda_context", False):
            return self.handler(record, lambda_context=self.lambda_context)
        return self.handler(record)

    def process(self) -> list[tuple[str, Any, Any]]:
        """Run the batch (``self.records``) through the pipeline; sort its records: success, failure."""
        entries = [record if isinstance(record, dict) else record.raw_event for record in self.records]
        response = self.lambda_handler({"Records": entries}, self._context)
        first_unfinished = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        failed_shards: dict[str, str] = {}  # shard -> the sequence number its failure starts at
        results: list[tuple[str, Any, Any]] = []
        for entry in entries:
            shard = str(entry.get("eventID", "")).partition(":")[0]
            sequence = entry.get("kinesis", {}).get("sequenceNumber")
            if sequence in first_unfinished and shard not in failed_shards:
                failed_shards[shard] = sequence
            record = KinesisStreamRecord(entry)
            if shard in failed_shards:
                error = RecordNotFinishedError(
                    f"shard {shard}: not finished from sequence number {failed_shards[shard]} on "
                    "(see qldbstream's log); Lambda sends these records again"
                )
                results.append(self.failure_handler(record, (type(error), error, None)))
            else:
                results.append(self.success_handler(record, None))
        return results

    async def _async_process_record(self, record: dict[str, Any]) -> Any:
        raise NotImplementedError("QldbStreamBatchProcessor is synchronous: use process_partial_response")

    def _process_record(self, record: dict[str, Any]) -> Any:
        raise NotImplementedError("QldbStreamBatchProcessor processes the whole batch at once (process())")
