"""One contract for every delivery-gate store (:class:`~qldbstream.core.gate_store.GateStore`): in memory
and DynamoDB.

The DynamoDB store runs against the session's moto server on 127.0.0.1, one fresh table per test;
each call of a ``gate_stores`` factory gives another store object over the same state (another
worker). Time is an injected clock where TTL matters. The threaded tests are bounded: every wait
has a timeout.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from qldbstream.core.errors import ConfigurationError
from qldbstream.core.gate import BlockKey, BlockVerdict, Link
from qldbstream.core.gate_store import GateStore, ParkedRecord
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.gate_dynamodb import (
    EXPIRY_INDEX,
    MAX_PARKED_ITEM_BYTES,
    DynamoDBGateStore,
    ParkedRecordTooLarge,
)
from qldbstream.pipeline.stores import InMemoryGateStore
from tests.support.aws import client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

STRAND = "JdxjkR9bSYB5jMHWcI464T"
ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/ledger"
SEQ = "49590338271490256608559692538361571095921575989136588898"
TTL = 3600.0
#: seconds any thread or barrier of a test may wait
WAIT = 30.0

GateFactory = Callable[[], GateStore]


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dynamodb(moto_server: MotoServer) -> Any:
    return client("dynamodb", moto_server.endpoint)


def table_name() -> str:
    return f"gate-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gate_table(dynamodb: Any) -> str:
    table = table_name()
    DynamoDBGateStore.create_table(dynamodb, table)
    return table


@pytest.fixture(params=["memory", "dynamodb"])
def gate_stores(request: pytest.FixtureRequest) -> GateFactory:
    if request.param == "memory":
        shared = InMemoryGateStore()
        return lambda: shared
    ddb = request.getfixturevalue("dynamodb")
    table = request.getfixturevalue("gate_table")
    return lambda: DynamoDBGateStore(ddb, table)


def verdict(
    seq: int = 7,
    *,
    block_hash: bytes = b"\x01" * 32,
    previous: bytes = b"\x02" * 32,
    tables: dict[str, tuple[str, str]] | None = None,
    failed: str = "",
    link: Link = Link.UNKNOWN,
    strand: str = STRAND,
) -> BlockVerdict:
    return BlockVerdict(
        strand,
        seq,
        block_hash,
        previous,
        f"tx{seq}",
        failed,
        {bytes([seq % 256]) * 32: "docA", b"\xff" * 32: "docB"},
        tables,
        link,
    )


def parked(
    i: int,
    key: BlockKey = (STRAND, 7),
    *,
    data: bytes | None = None,
    parked_at: float = 1_790_000_000.0,
    shard: str | None = "shardId-000000000000",
    arn: str | None = ARN,
    arrival: float | None = 1_789_999_990.25,
    kind: str = "revision",
) -> ParkedRecord:
    return ParkedRecord(
        key,
        data if data is not None else f"record {i}".encode(),
        shard,
        SEQ,
        i,
        f"pk-{i}",
        arn,
        arrival,
        "lambda",
        parked_at,
        kind,
    )


def by_id(records: list[ParkedRecord]) -> dict[str, ParkedRecord]:
    out = {r.id: r for r in records}
    assert len(out) == len(records), "a record was returned twice"
    return out


class CountingClient:
    """The real client; counts the calls of each operation."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr) or name.startswith("_") or name == "meta":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


class Locked:
    """The in-memory store is one object, not thread-safe: its calls take turns (each is atomic)."""

    def __init__(self, store: GateStore) -> None:
        self.store = store
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return attr(*args, **kwargs)

        return call


# --- verdicts ------------------------------------------------------------------------------------


def test_durable_only_on_dynamodb(gate_stores: GateFactory) -> None:
    store = gate_stores()
    assert store.durable is isinstance(store, DynamoDBGateStore)


def test_the_first_writer_wins_even_with_another_block_hash(gate_stores: GateFactory) -> None:
    store, other_worker = gate_stores(), gate_stores()
    first = verdict(block_hash=b"\x01" * 32)
    forged = verdict(block_hash=b"\x66" * 32, failed="V8")
    assert store.blocks([first.key]) == {}
    assert store.put_block(first) == first
    stored = other_worker.put_block(forged)
    assert stored == first and stored.block_hash == b"\x01" * 32
    assert other_worker.blocks([first.key]) == {first.key: first}
    assert store.put_block(first) == first  # the same verdict again changes nothing


def test_blocks_returns_only_stored_keys(gate_stores: GateFactory) -> None:
    store = gate_stores()
    verdicts = [verdict(seq) for seq in range(130)]  # more than one BatchGetItem (100 keys)
    for v in verdicts[::2]:
        store.put_block(v)
    keys = [v.key for v in verdicts] + [(STRAND, 7), ("other", 7)]  # duplicates and strangers
    assert gate_stores().blocks(keys) == {v.key: v for v in verdicts[::2]}
    assert store.blocks([]) == {}


def test_broken_is_final(gate_stores: GateFactory) -> None:
    store, other_worker = gate_stores(), gate_stores()
    v = store.put_block(verdict(3))
    store.set_link(v.key, Link.CONFIRMED)
    assert other_worker.blocks([v.key])[v.key].link is Link.CONFIRMED
    other_worker.set_link(v.key, Link.BROKEN)  # a confirmed block later found with a broken link
    assert store.blocks([v.key])[v.key].link is Link.BROKEN
    store.set_link(v.key, Link.CONFIRMED)
    store.set_link(v.key, Link.UNKNOWN)
    assert other_worker.blocks([v.key])[v.key].link is Link.BROKEN
    store.set_link((STRAND, 999), Link.CONFIRMED)  # no verdict: nothing appears
    assert store.blocks([(STRAND, 999)]) == {}


def test_a_verdict_round_trips_every_field(gate_stores: GateFactory) -> None:
    store = gate_stores()
    verdicts = [
        verdict(0, previous=b"", tables=None),  # the genesis block, no transactionInfo
        verdict(1, tables={}, failed="V4/V8", link=Link.BROKEN),
        verdict(2, tables={"docA": ("Person", "tbl1"), "docB": ("Vehicle", "tbl2")}, link=Link.CONFIRMED),
        BlockVerdict("Ünïcode-strand", 2**40, b"\x00" * 32, b"\x00", "", "", {}, {"d": ("", "")}),
    ]
    for v in verdicts:
        store.put_block(v)
    got = gate_stores().blocks([v.key for v in verdicts])
    assert got == {v.key: v for v in verdicts}
    assert got[verdicts[0].key].tables is None and got[verdicts[1].key].tables == {}
    assert got[verdicts[0].key].previous_hash == b""
    assert all(type(g.block_hash) is bytes and type(g.previous_hash) is bytes for g in got.values())


# --- parked records ------------------------------------------------------------------------------


def test_park_is_idempotent_and_keeps_the_first_parked_at(gate_stores: GateFactory) -> None:
    store, other_worker = gate_stores(), gate_stores()
    first = parked(1, parked_at=100.0)
    store.park([first, parked(1, parked_at=150.0)])  # twice in one call
    other_worker.park([parked(1, parked_at=200.0, data=b"later copy")])
    store.park([])
    assert store.parked(first.key) == [first]
    assert other_worker.parked(first.key)[0].parked_at == 100.0
    assert store.parked((STRAND, 8)) == []


def test_a_parked_record_round_trips_every_field(gate_stores: GateFactory) -> None:
    store = gate_stores()
    rng = random.Random(5)
    records = [
        parked(0, data=rng.randbytes(1000), parked_at=1_790_000_000.987654, arrival=1_789_999_999.123),
        parked(1, shard=None, arn=None, arrival=None, kind="block", data=b"\x00\xff"),
        ParkedRecord((STRAND, 7), b"", "shardId-1", "0", 0),  # every default: "" partition key, no arrival
        ParkedRecord(
            (STRAND, 7), b"x", "sh", "1" + "0" * 128, 2**40, "ключ", ARN, 0.5, "kcl ü", 1e-3, "revision"
        ),
        parked(4, arn=ARN + "x" * 1100),  # an id longer than a sort key may be
    ]
    store.park(records)
    assert by_id(gate_stores().parked((STRAND, 7))) == by_id(records)
    got = by_id(gate_stores().expired(float("inf"), 10))
    assert got == by_id(records)
    assert got[records[1].id].arrival is None and got[records[1].id].shard_id is None
    assert got[records[2].id].partition_key == "" and got[records[2].id].data == b""
    assert all(type(r.data) is bytes for r in got.values())


def test_parked_and_unpark_read_every_page(gate_stores: GateFactory) -> None:
    store = gate_stores()
    counting = None
    if isinstance(store, DynamoDBGateStore):
        counting = CountingClient(store.table.client)
        store.table.client = cast(Any, counting)
    rng = random.Random(9)
    key = (STRAND, 11)
    # 150 records of 8 KB: 1.2 MB, more than one Query page (1 MB); more than 25 deletes a call
    records = [parked(i, key, data=rng.randbytes(8 * 1024), parked_at=1000.0 + i) for i in range(150)]
    store.park(records)
    store.park([parked(0, (STRAND, 12))])  # the neighbouring block is not mixed in
    assert by_id(store.parked(key)) == by_id(records)
    if counting is not None:
        assert counting.calls["query"] >= 2
    gone = [r.id for r in records[::3]] + ["absent|id|1|0", records[0].id]
    gate_stores().unpark(key, gone)
    assert by_id(store.parked(key)) == by_id([r for r in records if r.id not in gone])
    store.unpark(key, [r.id for r in records])
    store.unpark((STRAND, 99), ["nothing|here|1|0"])
    store.unpark(key, [])
    assert store.parked(key) == []
    assert [r.key for r in store.parked((STRAND, 12))] == [(STRAND, 12)]


def test_expired_is_oldest_first_and_bounded(gate_stores: GateFactory) -> None:
    store = gate_stores()
    rng = random.Random(2)
    times = [1000.0 + i * 1.5 for i in range(60)]
    rng.shuffle(times)
    records = [parked(i, (STRAND, 20 + i % 4), parked_at=t) for i, t in enumerate(times)]
    for i in range(0, len(records), 7):
        store.park(records[i : i + 7])
    oldest = sorted(records, key=lambda r: r.parked_at)
    for before in (999.0, 1000.0, 1001.0, 1040.0, 1089.0, float("inf")):
        older = [r for r in oldest if r.parked_at < before]
        for limit in (0, 1, 2, 3, 7, 25, 60, 1000):
            assert gate_stores().expired(before, limit) == older[:limit], (before, limit)
    store.unpark(oldest[0].key, [oldest[0].id])
    store.unpark(oldest[2].key, [oldest[2].id])
    assert store.expired(1040.0, 3) == [oldest[1], *oldest[3:5]]


def test_a_record_parked_before_the_verdict_is_seen_by_one_side(gate_stores: GateFactory) -> None:
    """The gate's race: a revision worker parks its record and then reads the verdict; a block worker
    stores the verdict and then reads what is parked. Whatever the interleaving, one of them sees
    the other, so no parked record is left waiting for a verdict that was already stored."""
    first = gate_stores()
    shared: Any = Locked(first) if isinstance(first, InMemoryGateStore) else None
    rounds = 50
    barrier = threading.Barrier(2, timeout=WAIT)
    seen_by_revision_side: list[bool] = []
    seen_by_block_side: list[bool] = []
    # without a head start both writes usually land before either read (each side sees the other):
    # in some rounds one side sleeps a few milliseconds, so that the other one's write and read often
    # come first and only the late side can see the record
    rng = random.Random(4)
    head_start = [
        (rng.choice([0.0, 0.004]), 0.0) if n % 2 else (0.0, rng.choice([0.0, 0.004])) for n in range(rounds)
    ]

    def revision_worker() -> None:
        store = shared or gate_stores()
        for n in range(rounds):
            record = parked(n, (STRAND, 1000 + n))
            barrier.wait()
            time.sleep(head_start[n][0])
            store.park([record])
            seen_by_revision_side.append(record.key in store.blocks([record.key]))

    def block_worker() -> None:
        store = shared or gate_stores()
        for n in range(rounds):
            v = verdict(1000 + n)
            barrier.wait()
            time.sleep(head_start[n][1])
            store.put_block(v)
            seen_by_block_side.append([r.id for r in store.parked(v.key)] == [parked(n, v.key).id])

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(revision_worker), pool.submit(block_worker)]
        for future in futures:
            future.result(timeout=WAIT * 2)
    assert len(seen_by_revision_side) == len(seen_by_block_side) == rounds
    missed = [n for n in range(rounds) if not (seen_by_revision_side[n] or seen_by_block_side[n])]
    assert missed == []


# --- DynamoDB only -------------------------------------------------------------------------------


def test_a_record_too_large_for_an_item_is_refused_before_anything_is_written(
    dynamodb: Any, gate_table: str
) -> None:
    store = DynamoDBGateStore(dynamodb, gate_table)
    fits = parked(1, data=b"a" * (MAX_PARKED_ITEM_BYTES - 2048))
    huge = parked(2, data=b"b" * 1_000_000)  # a Kinesis record may hold 1 MB
    with pytest.raises(ParkedRecordTooLarge, match="dead-letter it") as caught:
        store.park([fits, huge])
    assert isinstance(caught.value, ValueError)
    assert caught.value.record is huge and caught.value.size > caught.value.limit == MAX_PARKED_ITEM_BYTES
    assert store.parked(fits.key) == []  # nothing of the call was written
    store.park([fits])
    assert store.parked(fits.key) == [fits]
    with pytest.raises(ParkedRecordTooLarge):
        store.park([parked(3, data=b"c" * (MAX_PARKED_ITEM_BYTES + 1))])


def test_items_carry_a_ttl_and_expired_items_are_absent(dynamodb: Any, gate_table: str, clock: Clock) -> None:
    store = DynamoDBGateStore(dynamodb, gate_table, ttl=TTL, clock=clock)
    old = verdict(5, block_hash=b"\x05" * 32)
    store.put_block(old)
    store.park([parked(1, old.key, parked_at=clock.now)])
    item = dynamodb.get_item(
        TableName=gate_table,
        Key={"pk": {"S": f"block#{STRAND}#5"}, "sk": {"S": "verdict"}},
        ConsistentRead=True,
    )["Item"]
    assert int(item["ttl"]["N"]) == int(clock.now + TTL)
    assert item["blockHash"] == {"B": b"\x05" * 32}  # binary, not base64
    clock.now += TTL - 5
    assert store.blocks([old.key]) == {old.key: old} and len(store.parked(old.key)) == 1
    clock.now += 10  # past the TTL; moto never deletes expired items (DynamoDB takes its time)
    assert store.blocks([old.key]) == {}
    assert store.parked(old.key) == [] and store.expired(float("inf"), 10) == []
    store.set_link(old.key, Link.CONFIRMED)  # an expired verdict is no verdict
    new = verdict(5, block_hash=b"\x06" * 32)
    assert store.put_block(new) == new  # an expired verdict does not win
    assert store.blocks([new.key]) == {new.key: new}
    again = parked(1, old.key, parked_at=clock.now)
    store.park([again])
    assert store.parked(old.key) == [again]


def test_create_table_is_idempotent_and_check_validates_the_schema(dynamodb: Any, gate_table: str) -> None:
    DynamoDBGateStore.create_table(dynamodb, gate_table)
    DynamoDBGateStore(dynamodb, gate_table).check()
    ttl = dynamodb.describe_time_to_live(TableName=gate_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    description = dynamodb.describe_table(TableName=gate_table)["Table"]
    assert [i["IndexName"] for i in description["GlobalSecondaryIndexes"]] == [EXPIRY_INDEX]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    missing = DynamoDBGateStore(dynamodb, table_name())
    with pytest.raises(ConfigurationError, match="does not exist"):
        missing.check()
    with pytest.raises(ConfigurationError, match="does not exist"):
        missing.parked((STRAND, 1))

    dedupe = table_name()
    DynamoDBDedupeStore.create_table(dynamodb, dedupe)
    with pytest.raises(ConfigurationError, match="gate's keys"):
        DynamoDBGateStore(dynamodb, dedupe).check()

    no_index = table_name()
    dynamodb.create_table(
        TableName=no_index,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ConfigurationError, match=EXPIRY_INDEX):
        DynamoDBGateStore(dynamodb, no_index).check()
