"""One contract for every de-duplication store and every checkpoint store: in memory and DynamoDB.

The DynamoDB stores run against the session's moto server, one fresh table per test. Time is an
injected clock (TTL expiry), and the DynamoDB-only tests inject throttling with a thin client
wrapper in front of the real server (moto never throttles). The last tests drive the real
:class:`~qldbstream.pipeline.batch.Pipeline` with two "workers" sharing one DynamoDB table.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.dedupe import Claim, ClaimResult, DedupeStore, LatePolicy, Watermark
from qldbstream.core.errors import RetryableError
from qldbstream.io.aws_errors import classify
from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore, position_key
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore, InMemoryCheckpointStore
from qldbstream.pipeline.reliability import Disposition, RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.aws import client
from tests.support.servers import MotoServer
from tests.support.streams import batches, kinesis_records, simulation

pytestmark = pytest.mark.integration

TTL = 3600.0
H = "audit"


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dynamodb(moto_server: MotoServer) -> Any:
    return client("dynamodb", moto_server.endpoint)


def table_name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


#: Each call of the factory gives another store object over the same state (another worker).
DedupeFactory = Callable[[], DedupeStore]
CheckpointFactory = Callable[[], CheckpointStore]


@pytest.fixture(params=["memory", "dynamodb"])
def dedupe_stores(request: pytest.FixtureRequest, clock: Clock) -> DedupeFactory:
    if request.param == "memory":
        shared = InMemoryDedupeStore(ttl=TTL, clock=clock)
        return lambda: shared
    ddb = request.getfixturevalue("dynamodb")
    table = table_name("dedupe")
    DynamoDBDedupeStore.create_table(ddb, table)
    return lambda: DynamoDBDedupeStore(ddb, table, ttl=TTL, clock=clock)


@pytest.fixture(params=["memory", "dynamodb"])
def checkpoint_stores(request: pytest.FixtureRequest) -> CheckpointFactory:
    if request.param == "memory":
        shared = InMemoryCheckpointStore()
        return lambda: shared
    ddb = request.getfixturevalue("dynamodb")
    table = table_name("checkpoints")
    DynamoDBCheckpointStore.create_table(ddb, table)
    return lambda: DynamoDBCheckpointStore(ddb, table)


# --- de-duplication store ------------------------------------------------------------------------


def test_done_marks_are_per_handler(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    assert store.done(H, ["rev#a#0"]) == set()
    store.mark_done(H, ["rev#a#0", "block#s#3"])
    assert store.done(H, ["rev#a#0", "rev#a#1", "block#s#3"]) == {"rev#a#0", "block#s#3"}
    assert store.done("other", ["rev#a#0", "block#s#3"]) == set()
    assert dedupe_stores().done(H, ["rev#a#0"]) == {"rev#a#0"}  # another worker sees it


def test_duplicate_keys_and_empty_requests(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    store.mark_done(H, ["rev#a#0", "rev#a#0", "rev#b#0"])
    assert store.done(H, ["rev#a#0", "rev#a#0", "rev#c#0", "rev#c#0"]) == {"rev#a#0"}
    store.mark_done(H, [])
    store.advance(H, {})
    assert store.done(H, []) == set()
    assert store.watermarks(H, []) == {}
    assert store.watermarks(H, ["a", "a"]) == {}


def test_many_keys_cross_batch_limits(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    keys = [f"rev#doc{i:03d}#{i % 7}" for i in range(260)]  # > 100 per read, > 25 per write
    store.mark_done(H, keys[::2])
    assert store.done(H, keys) == set(keys[::2])
    store.mark_done(H, keys)
    assert store.done(H, keys) == set(keys)
    marks = {f"doc{i:03d}": Watermark(i % 11, i % 5 == 0) for i in range(30)}
    store.advance(H, marks)
    assert store.watermarks(H, [*sorted(marks), "missing"]) == marks


def test_a_watermark_never_goes_down(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    store.advance(H, {"a": Watermark(5), "b": Watermark(1)})
    store.advance(H, {"a": Watermark(3), "b": Watermark(2)})
    assert store.watermarks(H, ["a", "b"]) == {"a": Watermark(5), "b": Watermark(2)}
    store.advance(H, {"a": Watermark(5, deleted=True)})  # the same version again changes nothing
    assert store.watermarks(H, ["a"]) == {"a": Watermark(5)}
    assert store.watermarks("other", ["a"]) == {}


def test_a_stale_worker_cannot_lower_a_watermark(dedupe_stores: DedupeFactory) -> None:
    first, second = dedupe_stores(), dedupe_stores()
    assert first.watermarks(H, ["a"]) == {}  # the first worker read nothing ...
    second.advance(H, {"a": Watermark(7)})  # ... the second raised the mark meanwhile ...
    first.advance(H, {"a": Watermark(4)})  # ... and the first's write, decided on stale data, loses
    assert first.watermarks(H, ["a"]) == second.watermarks(H, ["a"]) == {"a": Watermark(7)}


def test_concurrent_writers_race_to_the_highest_mark(dedupe_stores: DedupeFactory) -> None:
    docs = [f"doc{i}" for i in range(3)]
    lock = threading.Lock()  # the in-memory store is one object, not thread-safe: take turns there

    def worker(seed: int) -> None:
        store = dedupe_stores()
        plan = [(doc, v) for doc in docs for v in range(1, 11)]
        random.Random(seed).shuffle(plan)
        for doc, version in plan:
            if isinstance(store, InMemoryDedupeStore):
                with lock:
                    store.advance(H, {doc: Watermark(version)})
            else:
                store.advance(H, {doc: Watermark(version)})

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(worker, [1, 2]))
    assert dedupe_stores().watermarks(H, docs) == {doc: Watermark(10) for doc in docs}


def test_a_tombstone_keeps_the_deleted_flag_and_blocks_older_revisions(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    store.advance(H, {"a": Watermark(2)})
    store.advance(H, {"a": Watermark(3, deleted=True)})
    store.advance(H, {"a": Watermark(1)})  # an older revision arriving after the delete
    assert store.watermarks(H, ["a"]) == {"a": Watermark(3, deleted=True)}
    assert dedupe_stores().watermarks(H, ["a"]) == {"a": Watermark(3, deleted=True)}


def test_expired_marks_are_absent(dedupe_stores: DedupeFactory, clock: Clock) -> None:
    store = dedupe_stores()
    store.mark_done(H, ["rev#a#0"])
    store.advance(H, {"a": Watermark(9, deleted=True)})
    clock.now += TTL - 5
    assert store.done(H, ["rev#a#0"]) == {"rev#a#0"}
    assert store.watermarks(H, ["a"]) == {"a": Watermark(9, deleted=True)}
    clock.now += 10  # past the TTL; DynamoDB may not have deleted the items yet (moto never does)
    assert store.done(H, ["rev#a#0"]) == set()
    assert store.watermarks(H, ["a"]) == {}
    store.advance(H, {"a": Watermark(2)})  # an expired mark is no mark: a lower one may replace it
    store.mark_done(H, ["rev#a#0"])
    assert store.watermarks(H, ["a"]) == {"a": Watermark(2)}
    assert store.done(H, ["rev#a#0"]) == {"rev#a#0"}


# --- claims (what several processes sharing a store decide just before delivery) ---------------

OK, L, D, B, W = (
    ClaimResult.ORDERED,
    ClaimResult.LATE,
    ClaimResult.DUPLICATE,
    ClaimResult.BUSY,
    ClaimResult.WAIT,
)


def rev(
    doc: str, version: int, owner: str, deleted: bool = False, *, shard: str = "", holder: str = ""
) -> Claim:
    return Claim(f"rev#{doc}#{version}", owner, doc, version, deleted, holder, 60.0 if holder else 0.0, shard)


def claim(store: DedupeStore, *claims: Claim, handler: str = H) -> list[ClaimResult]:
    return store.claim(handler, list(claims))  # type: ignore[attr-defined]


def test_a_record_is_claimed_by_one_copy_and_again_by_the_same_copy(dedupe_stores: DedupeFactory) -> None:
    first, second = dedupe_stores(), dedupe_stores()
    assert claim(first, rev("a", 0, "shard-1|100"), Claim("block#s#7", "shard-1|101")) == [OK, OK]
    # another copy of each (another shard's position) is a duplicate ...
    assert claim(second, rev("a", 0, "shard-2|5"), Claim("block#s#7", "shard-3|9")) == [D, D]
    # ... the same copy, redelivered after a crash or a retried batch, claims them again, in order
    assert claim(second, rev("a", 0, "shard-1|100"), Claim("block#s#7", "shard-1|101")) == [OK, OK]
    # claims are per handler
    assert claim(second, rev("a", 0, "shard-2|5"), handler="other") == [OK]


def test_an_older_version_claimed_after_a_newer_one_is_late(dedupe_stores: DedupeFactory) -> None:
    first, second = dedupe_stores(), dedupe_stores()
    assert claim(first, rev("a", 2, "p2")) == [OK]
    assert claim(second, rev("a", 1, "p1"), rev("a", 3, "p3")) == [L, OK]
    assert claim(first, rev("a", 3, "p3")) == [OK]  # the owner's redelivery is still in order
    assert claim(first, rev("a", 2, "p2")) == [L]  # a newer version was claimed since
    assert claim(second, rev("a", 3, "other-copy")) == [D]
    assert first.watermarks(H, ["a"]) == {"a": Watermark(3)}


def test_a_document_s_claims_in_one_call_keep_their_order(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    claims = [rev(doc, v, f"{doc}|{v}") for v in range(6) for doc in ("a", "b", "c")]
    assert claim(store, *claims) == [OK] * len(claims)
    assert claim(store, rev("a", 4, "x"), rev("d", 1, "d|1"), rev("d", 0, "d|0")) == [D, OK, L]
    assert store.watermarks(H, ["a", "b", "c", "d"]) == {d: Watermark(5) for d in "abc"} | {"d": Watermark(1)}


def test_a_delete_claims_a_tombstone(dedupe_stores: DedupeFactory) -> None:
    store = dedupe_stores()
    assert claim(store, rev("a", 0, "p0"), rev("a", 1, "p1", deleted=True), rev("a", 0, "q0")) == [OK, OK, D]
    assert store.watermarks(H, ["a"]) == {"a": Watermark(1, deleted=True)}


def test_expired_claims_are_free(dedupe_stores: DedupeFactory, clock: Clock) -> None:
    store = dedupe_stores()
    assert claim(store, rev("a", 5, "p")) == [OK]
    clock.now += TTL + 1
    assert claim(store, rev("a", 5, "q"), rev("a", 1, "r")) == [OK, L]


def test_a_document_being_delivered_makes_other_shards_wait(
    dedupe_stores: DedupeFactory, clock: Clock
) -> None:
    first, second = dedupe_stores(), dedupe_stores()
    assert claim(first, rev("a", 1, "s1|10", shard="s1"), rev("a", 2, "s1|11", shard="s1")) == [OK, OK]
    # another shard's newer version waits while shard s1 delivers; an older one is late, not waiting
    assert claim(second, rev("a", 3, "s2|5", shard="s2"), rev("a", 0, "s2|6", shard="s2")) == [W, L]
    assert claim(second, rev("b", 0, "s2|7", shard="s2")) == [OK]  # other documents are free
    first.unlock(H, {"a": "s2"})  # type: ignore[attr-defined]  # not the locker: nothing happens
    assert claim(second, rev("a", 3, "s2|5", shard="s2")) == [W]
    first.unlock(H, {"a": "s1"})  # type: ignore[attr-defined]
    assert claim(second, rev("a", 3, "s2|5", shard="s2")) == [OK]
    # a locker that died (s2 never unlocks): the same shard's next processor takes the lock at
    # once, another shard when its time has passed
    assert claim(first, rev("a", 4, "s1|12", shard="s1")) == [W]
    assert claim(first, rev("a", 5, "s2|9", shard="s2")) == [OK]
    assert claim(first, rev("a", 6, "s1|13", shard="s1")) == [W]
    clock.now += 901
    assert claim(first, rev("a", 6, "s1|13", shard="s1")) == [OK]
    assert claim(first, rev("a", 4, "s1|12", shard="s1")) == [L]  # overtaken while it waited


def test_a_released_record_is_leased_to_the_process_that_released_it(
    dedupe_stores: DedupeFactory, clock: Clock
) -> None:
    store = dedupe_stores()
    parked = "s3|40"  # the copy's position; any process that verifies its block may release it
    assert claim(
        store, rev("a", 0, parked, holder="p1"), Claim("block#s#1", parked, holder="p1", lease=60.0)
    ) == [OK, OK]
    assert claim(
        store, rev("a", 0, parked, holder="p2"), Claim("block#s#1", parked, holder="p2", lease=60.0)
    ) == [B, B]
    assert claim(store, rev("a", 0, parked, holder="p1")) == [OK]  # the holder itself, again
    assert claim(store, rev("a", 0, "s9|1", holder="p2")) == [D]  # another copy: a duplicate
    clock.now += 61  # p1 died: its lease ends and p2 releases the copy
    assert claim(store, rev("a", 0, parked, holder="p2")) == [OK]


def test_concurrent_copies_are_claimed_exactly_once_and_inversions_are_flagged(
    dedupe_stores: DedupeFactory,
) -> None:
    """Four "processes" claim overlapping copies of three documents' versions, each in its own
    shuffled order, at the same time. Exactly one copy of each version wins; among the winners, a
    version claimed after a higher one of its document is always late, and one claimed after only
    lower ones never is (the order is the order of the claims, as the store saw them)."""
    docs = [f"doc{i}" for i in range(3)]
    lock = threading.Lock()
    log: list[tuple[str, int, ClaimResult]] = []

    def worker(seed: int) -> None:
        store = dedupe_stores()
        rng = random.Random(seed)
        work = [(doc, v) for doc in docs for v in range(12) if rng.random() < 0.7]
        rng.shuffle(work)
        for doc, v in work:
            if isinstance(store, InMemoryDedupeStore):
                with lock:
                    (result,) = claim(store, rev(doc, v, f"w{seed}|{doc}|{v}"))
                    log.append((doc, v, result))
            else:
                (result,) = claim(store, rev(doc, v, f"w{seed}|{doc}|{v}"))
                with lock:
                    log.append((doc, v, result))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(worker, [1, 2, 3, 4]))
    winners = Counter((doc, v) for doc, v, r in log if r is not D)
    claimed = {(doc, v) for doc, v, _ in log}
    assert winners == Counter(dict.fromkeys(claimed, 1))  # every version once, no version twice
    if isinstance(dedupe_stores(), InMemoryDedupeStore):
        # one lock orders the log exactly as the store saw the claims: check the late flags
        highest: dict[str, int] = {}
        for doc, v, r in log:
            if r is D:
                continue
            assert (r is L) == (v < highest.get(doc, -1)), (doc, v, r)
            highest[doc] = max(highest.get(doc, -1), v)
    assert dedupe_stores().watermarks(H, docs) == {
        doc: Watermark(max(v for d, v in claimed if d == doc)) for doc in docs
    }


# --- checkpoint store ----------------------------------------------------------------------------

BIG = "49590338271490256608559692538361571095921575989136588898"  # 56 digits, as Kinesis


def test_checkpoint_round_trip_and_all(checkpoint_stores: CheckpointFactory) -> None:
    store = checkpoint_stores()
    assert store.get("s", "shardId-0") is None
    assert store.all("s") == {}
    store.save("s", Checkpoint("shardId-0", BIG, 3))
    store.save("s", Checkpoint("shardId-1", None))
    store.save("other", Checkpoint("shardId-0", "1"))
    assert checkpoint_stores().get("s", "shardId-0") == Checkpoint("shardId-0", BIG, 3)
    assert store.all("s") == {
        "shardId-0": Checkpoint("shardId-0", BIG, 3),
        "shardId-1": Checkpoint("shardId-1", None),
    }
    assert store.all("other") == {"shardId-0": Checkpoint("shardId-0", "1")}


def test_checkpoint_never_moves_backwards(checkpoint_stores: CheckpointFactory) -> None:
    store, late_worker = checkpoint_stores(), checkpoint_stores()
    store.save("s", Checkpoint("sh", "20", 3))
    late_worker.save("s", Checkpoint("sh", "20", 1))
    late_worker.save("s", Checkpoint("sh", "19", 9))
    late_worker.save("s", Checkpoint("sh", None))
    assert store.get("s", "sh") == Checkpoint("sh", "20", 3)
    late_worker.save("s", Checkpoint("sh", "20", 4))
    assert store.get("s", "sh") == Checkpoint("sh", "20", 4)


def test_sequence_numbers_compare_as_integers(checkpoint_stores: CheckpointFactory) -> None:
    store = checkpoint_stores()
    store.save("s", Checkpoint("sh", "9"))
    store.save("s", Checkpoint("sh", "10"))
    assert store.get("s", "sh") == Checkpoint("sh", "10")
    store.save("s", Checkpoint("sh", "9"))
    assert store.get("s", "sh") == Checkpoint("sh", "10")
    store.save("s", Checkpoint("sh", BIG))
    store.save("s", Checkpoint("sh", "9" * 55))  # fewer digits, "larger" as a string
    assert store.get("s", "sh") == Checkpoint("sh", BIG)
    store.save("s", Checkpoint("sh", "1" + "0" * 128))  # the longest sequence number Kinesis allows
    assert store.get("s", "sh") == Checkpoint("sh", "1" + "0" * 128)


def test_shard_end_is_sticky(checkpoint_stores: CheckpointFactory) -> None:
    store = checkpoint_stores()
    store.save("s", Checkpoint("sh", "30"))
    store.save("s", Checkpoint("sh", "30", shard_ended=True))
    store.save("s", Checkpoint("sh", "40"))  # a zombie worker after the shard end
    assert store.get("s", "sh") == Checkpoint("sh", "30", shard_ended=True)
    store.save("s", Checkpoint("sh", "30", shard_ended=True))
    assert checkpoint_stores().all("s") == {"sh": Checkpoint("sh", "30", shard_ended=True)}


def test_a_shard_end_checkpoint_behind_the_stored_one_keeps_the_position(
    checkpoint_stores: CheckpointFactory,
) -> None:
    store = checkpoint_stores()
    store.save("s", Checkpoint("sh", "50", 2))
    store.save("s", Checkpoint("sh", None, shard_ended=True))  # e.g. KCL's SHARD_END without a number
    assert store.get("s", "sh") == Checkpoint("sh", "50", 2, shard_ended=True)


def test_concurrent_checkpoint_writers_end_at_the_furthest(checkpoint_stores: CheckpointFactory) -> None:
    lock = threading.Lock()

    def worker(seed: int) -> None:
        store = checkpoint_stores()
        numbers = list(range(1, 25))
        random.Random(seed).shuffle(numbers)
        for n in numbers:
            with lock if isinstance(store, InMemoryCheckpointStore) else _nothing():
                store.save("s", Checkpoint("sh", str(n)))

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(worker, [3, 4]))
    assert checkpoint_stores().get("s", "sh") == Checkpoint("sh", "24")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_position_key_orders_like_sequence_key() -> None:
    pairs = [(None, 0), ("0", 0), ("9", 0), ("9", 1), ("10", 0), (BIG, 0), (BIG, 12), ("1" + "0" * 128, 0)]
    keys = [position_key(s, sub) for s, sub in pairs]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


# --- DynamoDB only: throttling and unprocessed work -------------------------------------------


class ThrottlingClient:
    """The real client, except that the first ``throttles`` calls of ``operation`` raise a throttling
    error, and batch calls leave half their work unprocessed ``unprocessed`` times."""

    def __init__(self, real: Any, operation: str, throttles: int = 0, unprocessed: int = 0) -> None:
        self.real = real
        self.operation = operation
        self.throttles = throttles
        self.unprocessed = unprocessed
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name != self.operation:
            return attr

        def call(**kwargs: Any) -> Any:
            self.calls[name] += 1
            if self.throttles > 0:
                self.throttles -= 1
                raise ClientError(
                    {
                        "Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"},
                        "ResponseMetadata": {"HTTPStatusCode": 400},
                    },
                    name,
                )
            if self.unprocessed > 0 and name in ("batch_get_item", "batch_write_item"):
                self.unprocessed -= 1
                return self._half(name, kwargs)
            return attr(**kwargs)

        return call

    def _half(self, name: str, kwargs: dict[str, Any]) -> Any:
        ((table, request),) = kwargs["RequestItems"].items()
        if name == "batch_get_item":
            keys = request["Keys"]
            done = self.real.batch_get_item(RequestItems={table: {**request, "Keys": keys[::2]}})
            done["UnprocessedKeys"] = {table: {**request, "Keys": keys[1::2]}} if keys[1::2] else {}
            return done
        done = self.real.batch_write_item(RequestItems={table: request[::2]})
        done["UnprocessedItems"] = {table: request[1::2]} if request[1::2] else {}
        return done


@pytest.fixture
def dedupe_table(dynamodb: Any) -> str:
    table = table_name("dedupe")
    DynamoDBDedupeStore.create_table(dynamodb, table)
    return table


@pytest.mark.parametrize("operation", ["batch_get_item", "batch_write_item"])
def test_unprocessed_keys_and_items_are_sent_again(dynamodb: Any, dedupe_table: str, operation: str) -> None:
    keys = [f"rev#d{i}#0" for i in range(120)]
    sleeps = Sleeps()
    fake = ThrottlingClient(dynamodb, operation, throttles=1, unprocessed=3)
    store = DynamoDBDedupeStore(fake, dedupe_table, sleep=sleeps)
    store.mark_done(H, keys)
    assert store.done(H, keys) == set(keys)
    assert len(sleeps.calls) == 4  # one throttled call, three partial answers
    assert fake.calls[operation] > 2  # 120 keys: 2 reads or 5 writes, plus the repeats


def test_persistent_throttling_raises_a_retryable_error_after_bounded_attempts(
    dynamodb: Any, dedupe_table: str
) -> None:
    sleeps = Sleeps()
    fake = ThrottlingClient(dynamodb, "batch_get_item", throttles=10**6)
    store = DynamoDBDedupeStore(fake, dedupe_table, sleep=sleeps, retry=RetryPolicy(max_attempts=4))
    with pytest.raises(RetryableError, match="still failing after 4 attempts") as caught:
        store.done(H, ["rev#a#0"])
    assert fake.calls["batch_get_item"] == 4 and len(sleeps.calls) == 3
    assert classify(caught.value) is Disposition.RETRY_THEN_HALT


def test_unprocessed_work_that_never_shrinks_raises(dynamodb: Any, dedupe_table: str) -> None:
    class NeverProcessed(ThrottlingClient):
        def _half(self, name: str, kwargs: dict[str, Any]) -> Any:
            return {"UnprocessedItems": kwargs["RequestItems"]}

    fake = NeverProcessed(dynamodb, "batch_write_item", unprocessed=10**6)
    store = DynamoDBDedupeStore(fake, dedupe_table, sleep=Sleeps(), retry=RetryPolicy(max_attempts=3))
    with pytest.raises(RetryableError, match="1 unprocessed after 3 attempts"):
        store.mark_done(H, ["rev#a#0"])


def test_a_throttled_commit_halts_the_shard_and_the_redelivery_finishes_it(
    dynamodb: Any, dedupe_table: str
) -> None:
    sim = simulation(10)
    (records,) = kinesis_records(sim).values()
    seen: Counter[tuple[str, int]] = Counter()
    fake = ThrottlingClient(dynamodb, "batch_write_item", throttles=10**6)
    store = DynamoDBDedupeStore(fake, dedupe_table, sleep=Sleeps(), retry=RetryPolicy(max_attempts=2))
    pipeline = make_worker(store, seen)
    result = pipeline.process("s", records)
    assert result.halted and "de-duplication store failed" in result.halt_reason
    assert result.first_unfinished is not None and seen  # delivered, but not recorded as done
    assert result.checkpoint is None or int(result.checkpoint[0]) < int(records[-1].sequence_number)
    fake.throttles = 0  # DynamoDB recovers; the runtime delivers the batch again
    result = pipeline.process("s", records)
    assert not result.halted and result.checkpoint is not None
    assert result.checkpoint[0] == records[-1].sequence_number
    assert set(seen) == {(r.document_id, r.version) for r in sim.ledger.revisions}


def test_a_throttled_read_stops_the_batch_before_any_delivery(dynamodb: Any, dedupe_table: str) -> None:
    sim = simulation(10)
    (records,) = kinesis_records(sim).values()
    seen: Counter[tuple[str, int]] = Counter()
    fake = ThrottlingClient(dynamodb, "batch_get_item", throttles=10**6)
    store = DynamoDBDedupeStore(fake, dedupe_table, sleep=Sleeps(), retry=RetryPolicy(max_attempts=2))
    pipeline = make_worker(store, seen)
    result = pipeline.process("s", records)
    assert result.halted and "de-duplication store failed" in result.halt_reason
    assert not seen
    # the checkpoint may only cover records the handler does not want (CONTROL, DDL blocks): it stops at
    # the first Kinesis record that carries a revision
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import RevisionDetails, decode

    def carries_revision(record: Any) -> bool:
        return any(isinstance(decode(u), RevisionDetails) for u in deaggregate(record))

    first_revision = next(r for r in records if carries_revision(r))
    assert result.first_unfinished is first_revision
    fake.throttles = 0
    assert pipeline.process("s", records).first_unfinished is None
    assert set(seen) == {(r.document_id, r.version) for r in sim.ledger.revisions}


def test_a_missing_table_is_a_configuration_error(dynamodb: Any) -> None:
    from qldbstream.core.errors import ConfigurationError

    store = DynamoDBDedupeStore(dynamodb, table_name("missing"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.check()
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.done(H, ["rev#a#0"])


def test_create_table_is_idempotent_and_enables_ttl(dynamodb: Any, dedupe_table: str) -> None:
    DynamoDBDedupeStore.create_table(dynamodb, dedupe_table)
    DynamoDBDedupeStore(dynamodb, dedupe_table).check()
    ttl = dynamodb.describe_time_to_live(TableName=dedupe_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    assert dynamodb.describe_table(TableName=dedupe_table)["Table"]["BillingModeSummary"]["BillingMode"] == (
        "PAY_PER_REQUEST"
    )


# --- the pipeline with two workers on one DynamoDB table -------------------------------------


def make_worker(store: DedupeStore, ledger: Counter[tuple[str, int]]) -> Pipeline:
    """One worker: its own pipeline and handler object; ``ledger`` stands for the shared sink."""
    router = Router("sink")

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        ledger[(revision.document_id, revision.version)] += 1

    return Pipeline(
        [router],
        dlq=_NoDLQ(),
        store=store,
        settings=PipelineSettings(late_policy=LatePolicy.DELIVER_LATE),
        sleep=Sleeps(),
    )


class _NoDLQ:
    def put(self, letter: Any) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {letter.error_message}")

    def receive(self, limit: int = 10) -> Iterator[tuple[str, Any]]:
        return iter(())

    def delete(self, handle: str) -> None:
        return None


@pytest.fixture
def shared_tables(dynamodb: Any) -> tuple[Callable[[], DedupeStore], Callable[[], CheckpointStore]]:
    dedupe, checkpoints = table_name("dedupe"), table_name("checkpoints")
    DynamoDBDedupeStore.create_table(dynamodb, dedupe)
    DynamoDBCheckpointStore.create_table(dynamodb, checkpoints)
    return (lambda: DynamoDBDedupeStore(dynamodb, dedupe)), (
        lambda: DynamoDBCheckpointStore(dynamodb, checkpoints)
    )


def test_two_workers_on_the_same_batches_have_each_effect_once(shared_tables: Any) -> None:
    new_store, _ = shared_tables
    sim = simulation(24, shards=2, duplicates=0.2)
    ledger: Counter[tuple[str, int]] = Counter()
    first, second = make_worker(new_store(), ledger), make_worker(new_store(), ledger)
    duplicates = 0
    for shard, records in kinesis_records(sim).items():
        for batch in batches(records, 9):
            a, b = first.process(shard, batch), second.process(shard, batch)  # a redelivery to another worker
            assert a.checkpoint == b.checkpoint and not a.halted and not b.halted
            assert b.delivered.get("sink", 0) == 0
            duplicates += b.duplicates
    assert duplicates > 0
    assert set(ledger) == {(r.document_id, r.version) for r in sim.ledger.revisions}
    assert set(ledger.values()) == {1}


def test_a_worker_taking_over_a_lease_from_a_stale_checkpoint_repeats_no_effect(shared_tables: Any) -> None:
    new_store, new_checkpoints = shared_tables
    sim = simulation(24, shards=2, duplicates=0.2)
    ledger: Counter[tuple[str, int]] = Counter()
    shards = kinesis_records(sim)
    # worker 1 processes half of each shard but its checkpoint writes stop after a quarter
    first, first_cps = make_worker(new_store(), ledger), new_checkpoints()
    for shard, records in shards.items():
        chunks = batches(records, 5)
        for i, batch in enumerate(chunks[: len(chunks) // 2]):
            result = first.process(shard, batch)
            if i < len(chunks) // 4 and result.checkpoint is not None:
                first_cps.save("sim", Checkpoint(shard, result.checkpoint[0], result.checkpoint[1]))
    # worker 2 takes over every lease and resumes after the checkpoint it finds
    second, second_cps = make_worker(new_store(), ledger), new_checkpoints()
    redelivered = 0
    for shard, records in shards.items():
        checkpoint = second_cps.get("sim", shard)
        assert checkpoint is not None and checkpoint.sequence_number is not None
        rest = [r for r in records if int(r.sequence_number) >= int(checkpoint.sequence_number)]
        for batch in batches(rest, 5):
            result = second.process(shard, batch)
            assert result.checkpoint is not None
            second_cps.save("sim", Checkpoint(shard, result.checkpoint[0], result.checkpoint[1]))
            redelivered += result.duplicates
        final = second_cps.get("sim", shard)
        assert final is not None and final.sequence_number == records[-1].sequence_number
    assert redelivered > 0
    assert set(ledger) == {(r.document_id, r.version) for r in sim.ledger.revisions}
    assert set(ledger.values()) == {1}
