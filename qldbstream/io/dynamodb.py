"""The de-duplication store and the checkpoint store on DynamoDB, shared by any number of workers.

**De-duplication** (:class:`DynamoDBDedupeStore`, one table, partition key ``pk`` (S)):

====================================  ==================================================
item                                  attributes
====================================  ==================================================
``<handler>#<dedupe key>``            ``ttl`` (N, epoch seconds): a done mark
``<handler>#doc#<documentId>``        ``version`` (N), ``deleted`` (BOOL), ``owner`` (S),
                                      ``ttl``: a document's high-water mark (a tombstone
                                      when deleted); ``owner``: the copy that claimed it
                                      ``lockOwner`` (S), ``lockUntil`` (N): the copy
                                      being delivered, which other versions wait for
``<handler>#claim#<dedupe key>``      ``owner`` (S), ``ttl``: the copy (stream position)
                                      that claimed the record for delivery; ``holder``
                                      (S), ``lease`` (N): the process that released it
                                      from the gate's store, and until when it holds it
====================================  ==================================================

The store is *shared* (:meth:`DynamoDBDedupeStore.claim`, see :mod:`qldbstream.core.dedupe`): just
before delivery each record is claimed with a conditional ``PutItem`` (``attribute_not_exists(pk)
OR owner = :me`` and no other process's live lease: another copy's claim makes it a duplicate,
a lease on this copy makes it busy), and a revision then raises its
document's mark with a conditional ``UpdateItem`` (``version < :v OR (version = :v AND owner =
:me)``: otherwise it is late). A document's claims run in order; different documents' claims run
on a few threads at once, as one batch's worth of round trips would otherwise add up.

Done marks are read with ``BatchGetItem`` (100 keys a call) and written with ``BatchWriteItem``
(25 a call); unprocessed keys and items are sent again after a backoff. A watermark only ever
rises: :meth:`DynamoDBDedupeStore.advance` is a conditional ``UpdateItem``
(``attribute_not_exists(pk) OR version < :v``), so two workers racing cannot lower it. Every
item carries ``ttl``; DynamoDB deletes expired items within a day or two, and until then this
store treats an item whose ``ttl`` has passed as absent (as
:class:`~qldbstream.pipeline.stores.InMemoryDedupeStore`
does). Reads are strongly consistent, so a mark written by one worker is seen by the next read.

**Checkpoints** (:class:`DynamoDBCheckpointStore`, partition key ``stream`` (S), sort key
``shard_id`` (S)): a checkpoint never moves backwards and ``shard_ended`` is sticky. Kinesis
sequence numbers have up to 129 decimal digits, more than a DynamoDB number holds (38), so the
conditions compare ``position``: the sequence number zero-padded to 129 digits, ``:``, and the
sub-sequence number zero-padded to 20 - equal lengths, so string order is integer order.

What happens next on errors: throttling, 5xx and connection errors are retried here with
backoff (``retry``, an injected ``sleep``); when they persist the call raises
:class:`~qldbstream.core.errors.RetryableError`, the pipeline halts the shard and the batch is
delivered again later (nothing is lost). A missing table raises
:class:`~qldbstream.core.errors.ConfigurationError`. Any other ``ClientError`` propagates unchanged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from qldbstream.core.dedupe import DOCUMENT_LOCK, Claim, ClaimResult, Watermark
from qldbstream.core.errors import ConfigurationError, RetryableError
from qldbstream.io.aws_errors import classify, error_code
from qldbstream.pipeline.checkpoint import Checkpoint
from qldbstream.pipeline.reliability import Disposition, RetryPolicy, retry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "BATCH_GET_LIMIT",
    "BATCH_WRITE_LIMIT",
    "DynamoDBCheckpointStore",
    "DynamoDBDedupeStore",
    "position_key",
]

#: Keys per ``BatchGetItem`` and requests per ``BatchWriteItem`` (DynamoDB's limits).
BATCH_GET_LIMIT = 100
BATCH_WRITE_LIMIT = 25
#: Kinesis sequence numbers match ``0|([1-9]\d{0,128})``.
SEQUENCE_DIGITS = 129
SUB_SEQUENCE_DIGITS = 20
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
                    "create it first (see qldbstream.io.dynamodb create_table)"
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


class DynamoDBDedupeStore:
    """A :class:`~qldbstream.core.dedupe.DedupeStore` on one DynamoDB table (see the module docstring).

    ``ttl`` is how long marks live (seconds); ``clock`` (epoch seconds) decides what has expired;
    ``retry`` and ``sleep`` bound the retries of throttled calls.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        ttl: float = 7 * 24 * 3600.0,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.table = _Table(client, table, retry or RetryPolicy(max_attempts=8, max_delay=5.0), sleep)
        self.ttl = ttl
        self.clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    #: several processes use the table at once: records are claimed before delivery
    shared = True
    #: threads claiming different documents at once (one document's claims run in order)
    CLAIM_THREADS = 8

    @staticmethod
    def create_table(
        client: DynamoDBClient,
        table: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = CREATE_TIMEOUT,
    ) -> None:
        """Create the table (on demand, key ``pk``, TTL on ``ttl``) unless it exists; wait until ACTIVE."""
        _create_table(client, table, [("pk", "HASH")], "ttl", sleep, timeout)

    def check(self) -> None:
        """Fail at start-up, not at the first batch: raise ConfigurationError unless the table fits."""
        schema = self.table.call(
            "DescribeTable", partial(self.table.client.describe_table, TableName=self.table.name)
        )["Table"].get("KeySchema", [])
        if [(k["AttributeName"], k["KeyType"]) for k in schema] != [("pk", "HASH")]:
            raise ConfigurationError(
                f"DynamoDB table {self.table.name} does not have the de-duplication key (pk, HASH): {schema}"
            )

    def _expires(self) -> int:
        return math.ceil(self.clock() + self.ttl)

    def _live(self, items: list[Item]) -> dict[str, Item]:
        now = self.clock()
        return {i["pk"]["S"]: i for i in items if "ttl" not in i or float(i["ttl"]["N"]) > now}

    def done(self, handler: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are marked done for ``handler`` (and not expired)."""
        wanted = {f"{handler}#{key}": key for key in keys}
        if not wanted:
            return set()
        items = self.table.batch_get([{"pk": {"S": pk}} for pk in wanted], {"#pk": "pk", "#t": "ttl"})
        return {wanted[pk] for pk in self._live(items)}

    def mark_done(self, handler: str, keys: Sequence[str]) -> None:
        expires = {"N": str(self._expires())}
        pks = dict.fromkeys(f"{handler}#{key}" for key in keys)  # BatchWriteItem refuses duplicates
        self.table.batch_put([{"pk": {"S": pk}, "ttl": expires} for pk in pks])

    def watermarks(self, handler: str, document_ids: Sequence[str]) -> dict[str, Watermark]:
        wanted = {f"{handler}#doc#{doc}": doc for doc in document_ids}
        if not wanted:
            return {}
        items = self.table.batch_get(
            [{"pk": {"S": pk}} for pk in wanted],
            {"#pk": "pk", "#v": "version", "#d": "deleted", "#t": "ttl"},
        )
        return {
            wanted[pk]: Watermark(int(item["version"]["N"]), bool(item.get("deleted", {}).get("BOOL", False)))
            for pk, item in self._live(items).items()
        }

    def advance(self, handler: str, marks: dict[str, Watermark]) -> None:
        """Raise each document's mark where the stored one is lower, absent or expired.

        One conditional ``UpdateItem`` per document; a failed condition means another worker
        already raised the mark at least as high, which is not an error.
        """
        now = self.clock()
        expires = self._expires()
        for doc in sorted(marks):
            mark = marks[doc]
            self.table.update(
                Key={"pk": {"S": f"{handler}#doc#{doc}"}},
                UpdateExpression="SET #v = :v, #d = :d, #t = :t REMOVE #o",
                ConditionExpression="attribute_not_exists(#pk) OR #v < :v OR #t <= :now",
                ExpressionAttributeNames={
                    "#pk": "pk",
                    "#v": "version",
                    "#d": "deleted",
                    "#t": "ttl",
                    "#o": "owner",
                },
                ExpressionAttributeValues={
                    ":v": {"N": str(mark.version)},
                    ":d": {"BOOL": mark.deleted},
                    ":t": {"N": str(expires)},
                    ":now": {"N": repr(now)},
                },
            )

    def claim(self, handler: str, claims: Sequence[Claim]) -> list[ClaimResult]:
        """Claim each record for ``handler`` (see the module docstring); results in ``claims`` order."""
        now, expires = self.clock(), self._expires()
        results: list[ClaimResult] = [ClaimResult.DUPLICATE] * len(claims)
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(claims):
            groups.setdefault(c.document_id if c.document_id is not None else f"\0{i}", []).append(i)

        def run(indexes: list[int]) -> None:
            for i in indexes:
                results[i] = self._claim_one(handler, claims[i], now, expires)

        if len(groups) <= 1:
            for indexes in groups.values():
                run(indexes)
        else:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.CLAIM_THREADS, thread_name_prefix="qldbstream-claim")
            for _ in self._pool.map(run, groups.values()):
                pass
        return results

    def _claim_one(self, handler: str, c: Claim, now: float, expires: int) -> ClaimResult:
        pk = {"S": f"{handler}#claim#{c.key}"}
        item = {"pk": pk, "owner": {"S": c.owner}, "ttl": {"N": str(expires)}}
        if c.holder:
            item |= {"holder": {"S": c.holder}, "lease": {"N": repr(now + c.lease)}}
        mine = self.table.put(
            Item=item,
            ConditionExpression=(
                "attribute_not_exists(#pk) OR #t <= :now OR "
                "(#o = :o AND (attribute_not_exists(#h) OR #h = :h OR #l <= :now))"
            ),
            ExpressionAttributeNames={"#pk": "pk", "#o": "owner", "#t": "ttl", "#h": "holder", "#l": "lease"},
            ExpressionAttributeValues={":o": {"S": c.owner}, ":h": {"S": c.holder}, ":now": {"N": repr(now)}},
        )
        if not mine:  # another copy's claim, or this copy's, held by another process's live lease
            current = self.table.call(
                "GetItem",
                partial(
                    self.table.client.get_item, TableName=self.table.name, Key={"pk": pk}, ConsistentRead=True
                ),
            ).get("Item", {})
            same = current.get("owner", {}).get("S") == c.owner
            return ClaimResult.BUSY if same else ClaimResult.DUPLICATE
        if c.document_id is None:
            return ClaimResult.ORDERED
        doc = {"pk": {"S": f"{handler}#doc#{c.document_id}"}}
        ordered = self.table.update(
            Key=doc,
            UpdateExpression="SET #v = :v, #d = :d, #o = :o, #t = :t, #lo = :lo, #lu = :until",
            ConditionExpression=(
                "(attribute_not_exists(#pk) OR #v < :v OR #t <= :now OR (#v = :v AND #o = :o)) "
                "AND (attribute_not_exists(#lo) OR #lo = :lo OR #lu <= :now)"
            ),
            ExpressionAttributeNames=_DOC_NAMES,
            ExpressionAttributeValues={
                ":v": {"N": str(c.version)},
                ":d": {"BOOL": c.deleted},
                ":o": {"S": c.owner},
                ":lo": {"S": c.locker},
                ":t": {"N": str(expires)},
                ":now": {"N": repr(now)},
                ":until": {"N": repr(now + DOCUMENT_LOCK)},
            },
        )
        if ordered:
            return ClaimResult.ORDERED
        current = self.table.call(
            "GetItem",
            partial(self.table.client.get_item, TableName=self.table.name, Key=doc, ConsistentRead=True),
        ).get("Item", {})
        live = "ttl" in current and float(current["ttl"]["N"]) > now
        mark = int(current["version"]["N"]) if live and "version" in current else -1
        if mark > c.version or (mark == c.version and current.get("owner", {}).get("S") != c.owner):
            return ClaimResult.LATE
        return ClaimResult.WAIT  # an earlier version is being delivered elsewhere: come back later

    def unclaim(self, handler: str, claims: Sequence[tuple[str, str]]) -> None:
        """Delete the claims (key, owner) this owner still holds (a dead-lettered record's)."""
        for key, owner in claims:
            self.table.call(
                "DeleteItem",
                partial(
                    self._delete_claim,
                    Key={"pk": {"S": f"{handler}#claim#{key}"}},
                    ConditionExpression="#o = :o",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":o": {"S": owner}},
                ),
            )

    def _delete_claim(self, **request: Any) -> None:
        try:
            self.table.client.delete_item(TableName=self.table.name, **request)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":  # another owner's claim: not ours
                raise

    def unlock(self, handler: str, locks: Mapping[str, str]) -> None:
        """Let go of the documents ``locks`` names (documentId -> who locked it), once their
        revisions are delivered, skipped or dead-lettered. A lock taken over since (after its
        time) is left alone."""
        for document_id, owner in sorted(locks.items()):
            self.table.update(
                Key={"pk": {"S": f"{handler}#doc#{document_id}"}},
                UpdateExpression="REMOVE #lo, #lu",
                ConditionExpression="#lo = :o",
                ExpressionAttributeNames={"#lo": "lockOwner", "#lu": "lockUntil"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )


_DOC_NAMES = {
    "#pk": "pk",
    "#v": "version",
    "#d": "deleted",
    "#o": "owner",
    "#t": "ttl",
    "#lo": "lockOwner",
    "#lu": "lockUntil",
}


def position_key(sequence_number: str | None, sub_sequence_number: int = 0) -> str:
    """A string whose order is :func:`~qldbstream.pipeline.checkpoint.sequence_key` order ("-" before any)."""
    if sequence_number is None:
        return "-"
    return f"{int(sequence_number):0{SEQUENCE_DIGITS}d}:{sub_sequence_number:0{SUB_SEQUENCE_DIGITS}d}"


class DynamoDBCheckpointStore:
    """A :class:`~qldbstream.pipeline.checkpoint.CheckpointStore` on a DynamoDB table (see the module
    docstring)."""

    _NAMES = {  # noqa: RUF012 - a constant
        "#stream": "stream",
        "#seq": "sequence_number",
        "#sub": "sub_sequence_number",
        "#pos": "position",
        "#ended": "shard_ended",
        "#at": "updated_at",
    }

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.table = _Table(client, table, retry or RetryPolicy(max_attempts=8, max_delay=5.0), sleep)
        self.clock = clock

    @staticmethod
    def create_table(
        client: DynamoDBClient,
        table: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = CREATE_TIMEOUT,
    ) -> None:
        """Create the table (on demand, keys ``stream``, ``shard_id``) unless it exists; wait until ACTIVE."""
        _create_table(client, table, [("stream", "HASH"), ("shard_id", "RANGE")], None, sleep, timeout)

    @staticmethod
    def _checkpoint(item: Item) -> Checkpoint:
        return Checkpoint(
            item["shard_id"]["S"],
            item["sequence_number"]["S"] if "sequence_number" in item else None,
            int(item.get("sub_sequence_number", {}).get("N", "0")),
            bool(item.get("shard_ended", {}).get("BOOL", False)),
        )

    def get(self, stream: str, shard_id: str) -> Checkpoint | None:
        client, name = self.table.client, self.table.name
        response = self.table.call(
            "GetItem",
            partial(
                client.get_item,
                TableName=name,
                Key={"stream": {"S": stream}, "shard_id": {"S": shard_id}},
                ConsistentRead=True,
            ),
        )
        item = response.get("Item")
        return None if item is None else self._checkpoint(item)

    def all(self, stream: str) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        request: dict[str, Any] = {
            "TableName": self.table.name,
            "KeyConditionExpression": "#stream = :stream",
            "ExpressionAttributeNames": {"#stream": "stream"},
            "ExpressionAttributeValues": {":stream": {"S": stream}},
            "ConsistentRead": True,
        }
        while True:
            page = self.table.call("Query", partial(self.table.client.query, **request))
            for item in page.get("Items", []):
                checkpoint = self._checkpoint(item)
                out[checkpoint.shard_id] = checkpoint
            if "LastEvaluatedKey" not in page:
                return out
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` unless the stored one is further along or its shard has ended.

        A shard-end checkpoint always marks the shard ended, and keeps the stored position when
        that one is further along (a checkpoint never moves backwards).
        """
        cp = checkpoint
        values: dict[str, Any] = {
            ":pos": {"S": position_key(cp.sequence_number, cp.sub_sequence_number)},
            ":sub": {"N": str(cp.sub_sequence_number)},
            ":ended": {"BOOL": cp.shard_ended},
            ":at": {"N": repr(self.clock())},
        }
        update = "SET #pos = :pos, #sub = :sub, #ended = :ended, #at = :at"
        if cp.sequence_number is None:
            update += " REMOVE #seq"
        else:
            update += ", #seq = :seq"
            values[":seq"] = {"S": cp.sequence_number}
        condition = "attribute_not_exists(#stream) OR #pos <= :pos"
        if not cp.shard_ended:
            condition = "attribute_not_exists(#stream) OR (#ended = :ended AND #pos <= :pos)"
        key = {"stream": {"S": stream}, "shard_id": {"S": cp.shard_id}}
        for _ in range(3):  # the item can only appear or rise in between: this ends in 2 rounds
            if self.table.update(
                Key=key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=self._NAMES,
                ExpressionAttributeValues=values,
            ):
                return
            if not cp.shard_ended:
                return  # the stored checkpoint is further along, or its shard ended
            if self.table.update(
                Key=key,
                UpdateExpression="SET #ended = :ended, #at = :at",
                ConditionExpression="attribute_exists(#stream)",
                ExpressionAttributeNames={"#stream": "stream", "#ended": "shard_ended", "#at": "updated_at"},
                ExpressionAttributeValues={":ended": values[":ended"], ":at": values[":at"]},
            ):
                return
