"""The de-duplication store on DynamoDB, shared by any number of workers.

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

What happens next on errors: throttling, 5xx and connection errors are retried with backoff
(``retry``, an injected ``sleep``; see :mod:`qldbstream.io.dynamodb_table`); when they persist the
call raises :class:`~qldbstream.core.errors.RetryableError`, the pipeline halts the shard and the
batch is delivered again later (nothing is lost). A missing table raises
:class:`~qldbstream.core.errors.ConfigurationError`. Any other ``ClientError`` propagates unchanged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from qldbstream.core.dedupe import DOCUMENT_LOCK, Claim, ClaimResult, Watermark
from qldbstream.core.errors import ConfigurationError
from qldbstream.io.dynamodb_table import CREATE_TIMEOUT, Item, _code, _create_table, _Table
from qldbstream.pipeline.reliability import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["DynamoDBDedupeStore"]


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
