"""One DynamoDB table's calls, shared by the stores on DynamoDB (:mod:`qldbstream.io.dedupe_dynamodb`,
:mod:`qldbstream.io.checkpoint_dynamodb`, :mod:`qldbstream.io.gate_dynamodb`).

:class:`_Table` wraps a client and a table name: every call is retried with backoff (``retry``, an
injected ``sleep``) while it fails with throttling, 5xx or connection errors; when they persist it
raises :class:`~qldbstream.core.errors.RetryableError`, the pipeline halts the shard and the batch
is delivered again later (nothing is lost). A missing table raises
:class:`~qldbstream.core.errors.ConfigurationError`. Any other ``ClientError`` propagates unchanged.
``BatchGetItem`` (100 keys a call) and ``BatchWriteItem`` (25 a call) send unprocessed keys and items
again after a backoff; conditional writes answer False when their condition did not hold.

:func:`_create_table` creates an on-demand table (idempotent), waits until it is ACTIVE and turns TTL on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from qldbstream.core.errors import ConfigurationError, RetryableError
from qldbstream.io.aws_errors import classify, error_code
from qldbstream.pipeline.reliability import Disposition, RetryPolicy, retry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "BATCH_GET_LIMIT",
    "BATCH_WRITE_LIMIT",
    "CREATE_TIMEOUT",
    "Item",
]

#: Keys per ``BatchGetItem`` and requests per ``BatchWriteItem`` (DynamoDB's limits).
BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
#: How long :meth:`create_table` waits for the table to become ACTIVE.
CREATE_TIMEOUT = 120.0

_T = TypeVar("_T")
Item = dict[str, Any]


def _code(exc: BaseException) -> str:
    return error_code(exc) if isinstance(exc, ClientError) else ""


def _transient(exc: Exception) -> bool:
    """Retried here: a botocore error that is transient (not a missing table: that is a 400)."""
    return isinstance(exc, ClientError | BotoCoreError) and classify(exc) is Disposition.RETRY_THEN_HALT


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Table:
    """One table's calls: transient failures retried with backoff, unprocessed work sent again."""

    def __init__(
        self, client: DynamoDBClient, name: str, retry: RetryPolicy, sleep: Callable[[float], None]
    ) -> None:
        self.client = client
        self.name = name
        self.retry = retry
        self.sleep = sleep

    def call(self, what: str, operation: Callable[[], _T]) -> _T:
        """``operation()``, transient failures retried under the table's policy (then RetryableError)."""

        def give_up(exc: Exception, attempts: int) -> RetryableError:
            return RetryableError(
                f"DynamoDB {what} on {self.name}: still failing after {attempts} attempts "
                f"({_code(exc) or type(exc).__name__})",
                retry_after=self.retry.max_delay,
            )

        try:
            return retry(operation, self.retry, retryable=_transient, sleep=self.sleep, give_up=give_up)
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                raise ConfigurationError(
                    f"DynamoDB table {self.name} does not exist at {self.client.meta.endpoint_url}: "
                    "create it first (see the store's create_table)"
                ) from exc
            raise

    def _again(self, what: str, attempt: int, progressed: bool, left: int) -> int:
        """Back off before sending unprocessed work again; the attempt count restarts on progress."""
        attempt = 1 if progressed else attempt + 1
        if attempt > self.retry.max_attempts:
            raise RetryableError(
                f"DynamoDB {what} on {self.name}: {left} unprocessed after {self.retry.max_attempts} "
                "attempts (throttled)",
                retry_after=self.retry.max_delay,
            )
        self.sleep(self.retry.delay(attempt))
        return attempt

    def batch_get(self, keys: Sequence[Item], projection: Mapping[str, str]) -> list[Item]:
        """Every item of ``keys`` that exists (``projection``: placeholder -> attribute name)."""
        items: list[Item] = []
        for chunk in _chunks(keys, BATCH_GET_LIMIT):
            pending: dict[str, Any] = {
                self.name: {
                    "Keys": list(chunk),
                    "ConsistentRead": True,
                    "ProjectionExpression": ", ".join(projection),
                    "ExpressionAttributeNames": dict(projection),
                }
            }
            attempt = 1
            while True:
                response = self.call(
                    "BatchGetItem", partial(self.client.batch_get_item, RequestItems=pending)
                )
                items.extend(response.get("Responses", {}).get(self.name, []))
                unprocessed: dict[str, Any] = dict(response.get("UnprocessedKeys") or {})
                left = list(unprocessed.get(self.name, {}).get("Keys", []))
                if not left:
                    break
                progressed = len(left) < len(pending[self.name]["Keys"])
                attempt = self._again("BatchGetItem", attempt, progressed, len(left))
                pending = {self.name: {**pending[self.name], "Keys": left}}
        return items

    def batch_put(self, items: Sequence[Item]) -> None:
        self._batch_write([{"PutRequest": {"Item": item}} for item in items])

    def batch_delete(self, keys: Sequence[Item]) -> None:
        """Delete the items of ``keys`` (absent ones are no error)."""
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys])

    def _batch_write(self, requests: Sequence[Any]) -> None:
        """``BatchWriteItem`` in chunks of 25; unprocessed requests are sent again after a backoff."""
        for chunk in _chunks(requests, BATCH_WRITE_LIMIT):
            pending: list[Any] = list(chunk)
            attempt = 1
            while pending:
                response = self.call(
                    "BatchWriteItem",
                    partial(self.client.batch_write_item, RequestItems={self.name: pending}),
                )
                left = list(response.get("UnprocessedItems", {}).get(self.name, []))
                if not left:
                    break
                attempt = self._again("BatchWriteItem", attempt, len(left) < len(pending), len(left))
                pending = left

    def update(self, **request: Any) -> bool:
        """A conditional ``UpdateItem``; False when its condition did not hold."""
        return self._conditional("UpdateItem", self.client.update_item, request)

    def put(self, **request: Any) -> bool:
        """A conditional ``PutItem``; False when its condition did not hold."""
        return self._conditional("PutItem", self.client.put_item, request)

    def _conditional(self, what: str, operation: Callable[..., Any], request: dict[str, Any]) -> bool:
        try:
            self.call(what, partial(operation, TableName=self.name, **request))
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def query(self, **request: Any) -> Iterator[Item]:
        """Every item a ``Query`` matches, page by page (a page is read when the previous one is used up)."""
        request = {"TableName": self.name, **request}
        while True:
            page = self.call("Query", partial(self.client.query, **request))
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _create_table(
    client: DynamoDBClient,
    table: str,
    keys: Sequence[tuple[str, Literal["HASH", "RANGE"]]],
    ttl_attribute: str | None,
    sleep: Callable[[float], None],
    timeout: float,
    *,
    attributes: Sequence[tuple[str, Literal["S", "N", "B"]]] = (),
    indexes: Sequence[Any] = (),
) -> None:
    """Create an on-demand table with ``keys`` ((name, HASH|RANGE), all strings), and optionally more
    ``attributes`` for the global secondary ``indexes``; idempotent. Waits until the table and its
    indexes are ACTIVE, then turns TTL on for ``ttl_attribute``."""
    request: dict[str, Any] = {
        "TableName": table,
        "KeySchema": [{"AttributeName": name, "KeyType": kind} for name, kind in keys],
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name, _ in keys]
        + [{"AttributeName": name, "AttributeType": kind} for name, kind in attributes],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        request["GlobalSecondaryIndexes"] = list(indexes)
    try:
        client.create_table(**request)
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise
    waited = 0.0
    while True:
        description = client.describe_table(TableName=table)["Table"]
        statuses = [description.get("TableStatus")] + [
            index.get("IndexStatus") for index in description.get("GlobalSecondaryIndexes", [])
        ]
        if all(status == "ACTIVE" for status in statuses):
            break
        if waited >= timeout:
            raise TimeoutError(f"DynamoDB table {table} (or an index) is not ACTIVE after {timeout:g} s")
        sleep(0.2)
        waited += 0.2
    if ttl_attribute is not None:
        status = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if status.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute}
            )
