"""The delivery gate's store on DynamoDB: block verdicts and parked records shared by every worker.

:class:`DynamoDBGateStore` is a durable :class:`~qldbstream.core.gate_store.GateStore` on **one table**,
partition key ``pk`` (S), sort key ``sk`` (S); a block's verdict and the records waiting for it
share a partition, so one strongly consistent ``Query`` reads everything parked for a block:

==================================  ======================  ==========================================
``pk``                              ``sk``                  attributes
==================================  ======================  ==========================================
``block#<strandId>#<sequenceNo>``   ``verdict``             ``strandId`` (S), ``sequenceNo`` (N),
                                                            ``blockHash`` (B), ``previousBlockHash``
                                                            (B, empty for the genesis block),
                                                            ``transactionId`` (S), ``failed`` (S),
                                                            ``entries`` (L of M ``{h: B, d: S}``:
                                                            revision hash and documentId),
                                                            ``tables`` (M documentId -> L [tableName,
                                                            tableId]; absent when the block had no
                                                            ``transactionInfo``), ``link`` (S),
                                                            ``ttl`` (N)
``block#<strandId>#<sequenceNo>``   ``parked#<record id>``  ``strandId``, ``sequenceNo``, ``data`` (B),
                                                            ``shardId`` (S), ``sequenceNumber`` (S),
                                                            ``subSequenceNumber`` (N), ``partitionKey``
                                                            (S), ``streamArn`` (S), ``arrival`` (N),
                                                            ``source`` (S), ``parkedAt`` (N), ``kind``
                                                            (S), ``bucket`` (S), ``ttl`` (N)
==================================  ======================  ==========================================

``<record id>`` is :attr:`~qldbstream.core.gate_store.ParkedRecord.id` (``sha256:<hex>`` of it in the rare
case it would not fit DynamoDB's 1024-byte sort key). ``shardId``, ``streamArn`` and ``arrival``
are absent when they are ``None``. Hashes and data are binary (B) attributes, not base64.

**The global secondary index** ``parked-by-time`` (partition key ``bucket`` (S), sort key
``parkedAt`` (N), projection ``KEYS_ONLY``) serves :meth:`DynamoDBGateStore.expired`. It is
sparse - only parked items carry ``bucket`` - and ``bucket`` spreads them over
:data:`EXPIRY_BUCKETS` partitions (``crc32(record id) % 16``, two digits) so that one busy
gate does not make a hot index partition. :meth:`~DynamoDBGateStore.expired` queries every
bucket oldest first, merges them, and reads the items themselves with a strongly consistent
``BatchGetItem`` (an index is only eventually consistent: a record unparked a moment ago is
dropped there, and a record parked a moment ago may be missed until the next call - it is not old).

**Writes.** :meth:`~DynamoDBGateStore.put_block` is a conditional ``PutItem``
(``attribute_not_exists(pk) OR ttl <= :now``): the first writer wins, and a loser reads the stored
verdict back with a strongly consistent ``GetItem``. :meth:`~DynamoDBGateStore.set_link` is a
conditional ``UpdateItem`` that only touches a live verdict whose link is not ``broken`` (broken is
final). :meth:`~DynamoDBGateStore.park` is one conditional ``PutItem`` per record with the same
condition as a verdict's, so parking a record again keeps its first ``parkedAt``;
:meth:`~DynamoDBGateStore.unpark` is ``BatchWriteItem`` deletes. Every read of the base table is
strongly consistent, so a record parked before a verdict was stored is returned by a
:meth:`~DynamoDBGateStore.parked` call made after it (both writes are acknowledged by then).

**Expiry.** Every item carries ``ttl`` (epoch seconds: written at + ``ttl``, 14 days by default);
DynamoDB deletes expired items within a day or two, and until then this store treats them as
absent (and lets a new verdict or a new parking replace them). ``ttl`` must be longer than the
gate's maximum wait plus the time to drain :meth:`~DynamoDBGateStore.expired`: a parked record whose
item expires is gone without a dead letter.

**Size.** A DynamoDB item holds at most 400 KB, a Kinesis record up to 1 MB: :meth:`park` refuses a
record whose item would exceed :data:`MAX_PARKED_ITEM_BYTES` (350 KiB) with
:class:`ParkedRecordTooLarge` before it writes anything; the caller dead-letters that record.

Errors are those of :mod:`qldbstream.io.dynamodb_table`: throttling, 5xx and connection errors are
retried with backoff and then raise :class:`~qldbstream.core.errors.RetryableError`; a missing table
raises :class:`~qldbstream.core.errors.ConfigurationError`; any other ``ClientError`` propagates.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError, RetryableError
from qldbstream.core.gate import BlockKey, BlockVerdict, Link
from qldbstream.core.gate_store import ParkedRecord
from qldbstream.io.dynamodb_table import BATCH_GET_LIMIT, CREATE_TIMEOUT, Item, _create_table, _Table
from qldbstream.io.gate_items import (
    EXPIRY_BUCKETS,
    PARKED_ATTRIBUTES,
    PARKED_SK_PREFIX,
    VERDICT_ATTRIBUTES,
    VERDICT_SK,
    attribute_names,
    block_pk,
    block_verdict,
    dynamo_number,
    item_size,
    parked_item,
    parked_record,
    parked_sk,
    verdict_item,
)
from qldbstream.pipeline.reliability import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "DEFAULT_TTL",
    "EXPIRY_BUCKETS",
    "EXPIRY_INDEX",
    "MAX_PARKED_ITEM_BYTES",
    "DynamoDBGateStore",
    "ParkedRecordTooLarge",
    "item_size",
]

#: How long verdicts and parked records live (seconds) unless told otherwise.
DEFAULT_TTL = 14 * 24 * 3600.0
#: The global secondary index that orders parked records by ``parkedAt``.
EXPIRY_INDEX = "parked-by-time"
#: The largest parked item this store writes (DynamoDB's limit is 400 KB, 409,600 bytes).
MAX_PARKED_ITEM_BYTES = 350 * 1024
_KEY_SCHEMA = [("pk", "HASH"), ("sk", "RANGE")]
_INDEX_SCHEMA = [("bucket", "HASH"), ("parkedAt", "RANGE")]
#: A put that only creates an item, or replaces one whose ``ttl`` has passed.
_ABSENT = "attribute_not_exists(#pk) OR #ttl <= :now"


class ParkedRecordTooLarge(ValueError):
    """A parked record would not fit a DynamoDB item: dead-letter it instead of parking it.

    Raised by :meth:`DynamoDBGateStore.park` before any record of the call is written;
    ``record`` is the first record of the call that does not fit, ``size`` its item's estimated
    size and ``limit`` :data:`MAX_PARKED_ITEM_BYTES`. Parking the other records again is safe.
    """

    def __init__(self, record: ParkedRecord, size: int, limit: int) -> None:
        super().__init__(
            f"parked record {record.id} (block {record.key[0]}/{record.key[1]}, {len(record.data)} bytes of "
            f"data) would be a {size}-byte DynamoDB item, over this store's limit of {limit} bytes: "
            "dead-letter it"
        )
        self.record = record
        self.size = size
        self.limit = limit


class DynamoDBGateStore:
    """A durable :class:`~qldbstream.core.gate_store.GateStore` on one DynamoDB table (see the module
    docstring).

    ``ttl`` is how long items live (seconds); ``clock`` (epoch seconds) decides what has expired;
    ``retry`` and ``sleep`` bound the retries of throttled calls.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        ttl: float = DEFAULT_TTL,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.table = _Table(client, table, retry or RetryPolicy(max_attempts=8, max_delay=5.0), sleep)
        self.ttl = ttl
        self.clock = clock

    @property
    def durable(self) -> bool:
        return True

    # --- the table ---------------------------------------------------------------------------

    @staticmethod
    def create_table(
        client: DynamoDBClient,
        table: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = CREATE_TIMEOUT,
    ) -> None:
        """Create the table (on demand, keys ``pk``/``sk``, the ``parked-by-time`` index, TTL on ``ttl``)
        unless it exists; wait until it and its index are ACTIVE."""
        _create_table(
            client,
            table,
            [("pk", "HASH"), ("sk", "RANGE")],
            "ttl",
            sleep,
            timeout,
            attributes=[("bucket", "S"), ("parkedAt", "N")],
            indexes=[
                {
                    "IndexName": EXPIRY_INDEX,
                    "KeySchema": [
                        {"AttributeName": "bucket", "KeyType": "HASH"},
                        {"AttributeName": "parkedAt", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )

    def check(self) -> None:
        """Fail at start-up, not at the first batch: raise ConfigurationError unless the table fits."""
        description = self.table.call(
            "DescribeTable", partial(self.table.client.describe_table, TableName=self.table.name)
        )["Table"]
        schema = [(k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", [])]
        if schema != _KEY_SCHEMA:
            raise ConfigurationError(
                f"DynamoDB table {self.table.name} does not have the gate's keys (pk HASH, sk RANGE): "
                f"{schema}"
            )
        indexes = {
            index["IndexName"]: [(k["AttributeName"], k["KeyType"]) for k in index.get("KeySchema", [])]
            for index in description.get("GlobalSecondaryIndexes", [])
        }
        if indexes.get(EXPIRY_INDEX) != _INDEX_SCHEMA:
            raise ConfigurationError(
                f"DynamoDB table {self.table.name} lacks the index {EXPIRY_INDEX} (bucket HASH, parkedAt "
                f"RANGE) that finds parked records by age: {indexes.get(EXPIRY_INDEX)}"
            )

    # --- verdicts ----------------------------------------------------------------------------

    def _expires(self) -> dict[str, str]:
        return {"N": str(math.ceil(self.clock() + self.ttl))}

    def _live(self, item: Item, now: float) -> bool:
        return "ttl" not in item or float(item["ttl"]["N"]) > now

    def blocks(self, keys: Sequence[BlockKey]) -> dict[BlockKey, BlockVerdict]:
        wanted = dict.fromkeys(keys)  # BatchGetItem refuses duplicate keys
        if not wanted:
            return {}
        items = self.table.batch_get(
            [{"pk": {"S": block_pk(key)}, "sk": {"S": VERDICT_SK}} for key in wanted],
            attribute_names(VERDICT_ATTRIBUTES),
        )
        now = self.clock()
        verdicts = (block_verdict(item) for item in items if self._live(item, now))
        return {v.key: v for v in verdicts}

    def _get_verdict(self, key: BlockKey) -> BlockVerdict | None:
        response = self.table.call(
            "GetItem",
            partial(
                self.table.client.get_item,
                TableName=self.table.name,
                Key={"pk": {"S": block_pk(key)}, "sk": {"S": VERDICT_SK}},
                ConsistentRead=True,
            ),
        )
        item = response.get("Item")
        if item is None or not self._live(item, self.clock()):
            return None
        return block_verdict(item)

    def put_block(self, verdict: BlockVerdict) -> BlockVerdict:
        """Store ``verdict`` unless a live one is stored for its block; return the stored one."""
        item = verdict_item(verdict, self._expires())
        for _ in range(3):  # only an expiry between the put and the read makes a second round
            if self.table.put(
                Item=item,
                ConditionExpression=_ABSENT,
                ExpressionAttributeNames={"#pk": "pk", "#ttl": "ttl"},
                ExpressionAttributeValues={":now": {"N": dynamo_number(self.clock())}},
            ):
                return verdict
            stored = self._get_verdict(verdict.key)
            if stored is not None:
                return stored
        raise RetryableError(
            f"DynamoDB PutItem on {self.table.name}: the verdict of block {verdict.sequence_no} "
            "was neither stored nor readable (it kept expiring)"
        )

    def set_link(self, key: BlockKey, link: Link) -> None:
        """Set a stored, live verdict's link unless it is ``broken`` (absent verdicts are ignored)."""
        self.table.update(
            Key={"pk": {"S": block_pk(key)}, "sk": {"S": VERDICT_SK}},
            UpdateExpression="SET #link = :link",
            ConditionExpression="attribute_exists(#pk) AND #link <> :broken AND #ttl > :now",
            ExpressionAttributeNames={"#pk": "pk", "#link": "link", "#ttl": "ttl"},
            ExpressionAttributeValues={
                ":link": {"S": link.value},
                ":broken": {"S": Link.BROKEN.value},
                ":now": {"N": dynamo_number(self.clock())},
            },
        )

    # --- parked records ----------------------------------------------------------------------

    def park(self, records: Sequence[ParkedRecord]) -> None:
        """Park each record unless a live record with its id is parked already (that one keeps its
        ``parked_at``). Raises :class:`ParkedRecordTooLarge` before writing anything when one does not fit."""
        expires = self._expires()
        items = []
        for record in records:
            item = parked_item(record, expires)
            size = item_size(item)
            if size > MAX_PARKED_ITEM_BYTES:
                raise ParkedRecordTooLarge(record, size, MAX_PARKED_ITEM_BYTES)
            items.append(item)
        for item in items:
            self.table.put(
                Item=item,
                ConditionExpression=_ABSENT,
                ExpressionAttributeNames={"#pk": "pk", "#ttl": "ttl"},
                ExpressionAttributeValues={":now": {"N": dynamo_number(self.clock())}},
            )

    def parked(self, key: BlockKey) -> list[ParkedRecord]:
        """Every live record parked for ``key`` (a strongly consistent Query, all pages)."""
        items = self.table.query(
            KeyConditionExpression="#pk = :pk AND begins_with(#sk, :parked)",
            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"},
            ExpressionAttributeValues={":pk": {"S": block_pk(key)}, ":parked": {"S": PARKED_SK_PREFIX}},
            ConsistentRead=True,
        )
        now = self.clock()
        return [parked_record(item) for item in items if self._live(item, now)]

    def unpark(self, key: BlockKey, ids: Sequence[str]) -> None:
        sks = dict.fromkeys(parked_sk(i) for i in ids)  # BatchWriteItem refuses duplicates
        self.table.batch_delete([{"pk": {"S": block_pk(key)}, "sk": {"S": sk}} for sk in sks])

    def _oldest(self, bucket: int, parked_before: float, page: int) -> Iterator[tuple[float, str, str]]:
        """(parkedAt, pk, sk) of one bucket's records parked before ``parked_before``, oldest first."""
        condition = "#b = :b"
        values: dict[str, Any] = {":b": {"S": f"{bucket:02d}"}}
        names = {"#b": "bucket"}
        if not math.isinf(parked_before):
            condition += " AND #at < :before"
            values[":before"] = {"N": dynamo_number(parked_before)}
            names["#at"] = "parkedAt"
        for item in self.table.query(
            IndexName=EXPIRY_INDEX,
            KeyConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ScanIndexForward=True,
            Limit=page,
        ):
            yield float(item["parkedAt"]["N"]), item["pk"]["S"], item["sk"]["S"]

    def expired(self, parked_before: float, limit: int) -> list[ParkedRecord]:
        """Up to ``limit`` live records parked before ``parked_before`` (epoch seconds), oldest first."""
        if limit <= 0 or math.isnan(parked_before) or parked_before == -math.inf:
            return []
        page = min(limit, 1000)
        oldest = heapq.merge(*(self._oldest(b, parked_before, page) for b in range(EXPIRY_BUCKETS)))
        projection = attribute_names(PARKED_ATTRIBUTES)
        found: list[ParkedRecord] = []
        while len(found) < limit:
            chunk = dict.fromkeys(
                (pk, sk) for _, pk, sk in islice(oldest, min(BATCH_GET_LIMIT, limit - len(found)))
            )
            if not chunk:
                break
            items = self.table.batch_get([{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in chunk], projection)
            now = self.clock()
            found.extend(
                record
                for record in (parked_record(item) for item in items if self._live(item, now))
                if record.parked_at < parked_before
            )
        found.sort(key=lambda r: (r.parked_at, r.id))
        return found[:limit]
