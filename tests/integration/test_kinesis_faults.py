"""Faults no local server produces: throttling, expired iterators, partial PutRecords failures.

A real boto3 client talks to moto server through :class:`FaultyKinesis`, which raises scripted
``ClientError`` exceptions or fails chosen PutRecords entries (never sending them), and passes every
other call through. Time is fake: the injected ``sleep`` records each delay and advances the injected
clock, so nothing here really waits. The pure cases (limits, validation, ListShards paging) use no
server; paging uses botocore's Stubber because moto never pages ListShards without ``MaxResults``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from qldbstream.core.errors import RetryableError
from qldbstream.io.kinesis_reader import StartPosition, kinesis_retry, read_stream
from qldbstream.io.kinesis_writer import MAX_RECORD_BYTES, PutEntry, create_stream, put_records
from qldbstream.pipeline.reliability import RetryPolicy
from tests.support.aws import client, kinesis_stream
from tests.support.fakes import FakeTime
from tests.support.servers import MotoServer

THROTTLED = "ProvisionedThroughputExceededException"


class FaultyKinesis:
    """Pass calls through to a real client, except the faults scripted with ``fail``/``fail_entries``."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.meta = real.meta
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._faults: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._seen: dict[str, int] = defaultdict(int)
        self._entry_faults: list[Callable[[int], str | None]] = []

    def fail(self, operation: str, code: str, times: int = 1, *, after: int = 0) -> None:
        """Raise ``code`` on the next ``times`` calls of ``operation``, once ``after`` calls went through."""
        first = self._seen[operation] + after
        self._faults[operation].extend((first + i, code) for i in range(times))

    def fail_entries(self, *rules: Callable[[int], str | None]) -> None:
        """PutRecords call number n (0-based) fails entry i with ``rules[n](i)`` when that is not None."""
        self._entry_faults.extend(rules)

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        real = getattr(self.real, operation)

        def call(**params: Any) -> Any:
            number = self._seen[operation]
            self._seen[operation] += 1
            self.calls.append((operation, params))
            for when, code in self._faults[operation]:
                if when == number:
                    error = {"Error": {"Code": code, "Message": "injected by the test"}}
                    raise ClientError(error, operation)  # type: ignore[arg-type]
            if operation == "put_records" and self._entry_faults:
                return self._put_with_failures(params, self._entry_faults.pop(0))
            return real(**params)

        return call

    def _put_with_failures(self, params: dict[str, Any], rule: Callable[[int], str | None]) -> Any:
        codes = [rule(i) for i in range(len(params["Records"]))]
        sent = [r for r, code in zip(params["Records"], codes, strict=True) if code is None]
        written = iter(self.real.put_records(**{**params, "Records": sent})["Records"] if sent else [])
        records = [
            next(written) if code is None else {"ErrorCode": code, "ErrorMessage": "injected"}
            for code in codes
        ]
        return {"FailedRecordCount": sum(c is not None for c in codes), "Records": records}


@pytest.fixture
def moto_kinesis(moto_server: MotoServer) -> Any:
    return client("kinesis", moto_server.endpoint)


@pytest.fixture
def stream(moto_kinesis: Any) -> Iterator[str]:
    with kinesis_stream(moto_kinesis, 1, prefix="faults") as name:
        yield name


def payloads(count: int) -> list[PutEntry]:
    return [PutEntry(f"r{i}".encode(), f"k{i % 7}") for i in range(count)]


def read(kinesis: Any, stream: str, fake: FakeTime, **options: Any) -> list[bytes]:
    records = read_stream(
        kinesis, stream, sleep=fake.sleep, clock=fake.clock, rng=random.Random(7), **options
    )
    return [r.data for r in records]


def expected_delays(count: int, seed: int = 7) -> list[float]:
    policy = kinesis_retry(rng=random.Random(seed))
    return [policy.delay(n) for n in range(1, count + 1)]


# -- reading -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_throttled_get_records_is_retried_with_growing_backoff(moto_kinesis: Any, stream: str) -> None:
    put_records(moto_kinesis, stream, payloads(50))
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail("get_records", THROTTLED, times=3)

    data = read(faulty, stream, fake)

    assert data == [e.data for e in payloads(50)]
    assert fake.slept[:3] == expected_delays(3)
    for n, delay in enumerate(fake.slept[:3]):
        assert 0.1 * 2**n / 2 <= delay <= 0.1 * 2**n
    assert [op for op, _ in faulty.calls].count("get_records") == 3 + 2  # 3 throttled, 1 batch, 1 empty


@pytest.mark.integration
@pytest.mark.parametrize(
    "operation,code",
    [("list_shards", "LimitExceededException"), ("get_shard_iterator", "KMSThrottlingException")],
)
def test_throttling_that_does_not_stop_raises_retryable_error(
    moto_kinesis: Any, stream: str, operation: str, code: str
) -> None:
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail(operation, code, times=100)

    with pytest.raises(RetryableError, match=f"still throttled after 4 attempts \\({code}\\)") as caught:
        read(faulty, stream, fake, max_attempts=4)

    assert len(fake.slept) == 3
    assert fake.slept == expected_delays(3)
    assert caught.value.retry_after == kinesis_retry().max_delay
    assert stream in str(caught.value)


@pytest.mark.integration
def test_expired_iterator_resumes_after_the_last_record_read(moto_kinesis: Any, stream: str) -> None:
    put_records(moto_kinesis, stream, payloads(100))
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail("get_records", "ExpiredIteratorException", after=1)  # after the first batch of 30

    records = list(read_stream(faulty, stream, limit=30, sleep=fake.sleep, clock=fake.clock))

    assert [r.data for r in records] == [e.data for e in payloads(100)]
    requests = [params for op, params in faulty.calls if op == "get_shard_iterator"]
    assert [r["ShardIteratorType"] for r in requests] == ["TRIM_HORIZON", "AFTER_SEQUENCE_NUMBER"]
    assert requests[1]["StartingSequenceNumber"] == records[29].sequence_number


@pytest.mark.integration
def test_expired_iterator_before_any_record_restarts_at_the_start_position(
    moto_kinesis: Any, stream: str
) -> None:
    put_records(moto_kinesis, stream, payloads(10))
    time.sleep(0.02)
    since = datetime.now(UTC)
    time.sleep(0.02)
    put_records(moto_kinesis, stream, payloads(5))
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail("get_records", "ExpiredIteratorException", times=2)

    data = read(faulty, stream, fake, start=StartPosition.at_timestamp(since))

    assert data == [e.data for e in payloads(5)]
    requests = [params for op, params in faulty.calls if op == "get_shard_iterator"]
    assert len(requests) == 3
    assert all(r["ShardIteratorType"] == "AT_TIMESTAMP" and r["Timestamp"] == since for r in requests)


@pytest.mark.integration
def test_an_iterator_that_keeps_expiring_raises_retryable_error(moto_kinesis: Any, stream: str) -> None:
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail("get_records", "ExpiredIteratorException", times=100)
    with pytest.raises(RetryableError, match="expired 4 times in a row"):
        read(faulty, stream, fake, max_attempts=3)


@pytest.mark.integration
def test_tailing_idles_at_poll_interval_until_end_time(moto_kinesis: Any, stream: str) -> None:
    put_records(moto_kinesis, stream, payloads(10))
    fake = FakeTime(time.time())
    end = datetime.fromtimestamp(fake.now + 5, UTC)

    data = read(moto_kinesis, stream, fake, until_caught_up=False, end_time=end, poll_interval=1.0)

    assert data == [e.data for e in payloads(10)]
    assert fake.slept
    assert all(0 < s <= 1.0 for s in fake.slept)
    assert fake.now >= end.timestamp()  # it stopped because the window closed, not before


# -- writing -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_put_retries_only_the_failed_entries(moto_kinesis: Any, stream: str) -> None:
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    every_third: Callable[[int], str | None] = lambda i: THROTTLED if i % 3 == 0 else None  # noqa: E731
    faulty.fail_entries(every_third, every_third)
    written = payloads(30)

    results = put_records(faulty, stream, written, sleep=fake.sleep, rng=random.Random(7))

    sizes = [len(params["Records"]) for op, params in faulty.calls if op == "put_records"]
    assert sizes == [30, 10, 4]
    assert fake.slept == expected_delays(2)
    stored = list(read_stream(moto_kinesis, stream, sleep=fake.sleep, clock=fake.clock))
    assert sorted(r.data for r in stored) == sorted(e.data for e in written)  # each exactly once
    where = {r.data: r.sequence_number for r in stored}
    assert [r.sequence_number for r in results] == [where[e.data] for e in written]


@pytest.mark.integration
def test_put_gives_up_naming_the_count_and_the_codes(moto_kinesis: Any, stream: str) -> None:
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())

    def mostly_failing(i: int) -> str | None:
        return None if i >= 20 else (THROTTLED if i % 2 else "InternalFailure")

    faulty.fail_entries(mostly_failing, *[lambda i: THROTTLED if i < 12 else "InternalFailure"] * 2)

    with pytest.raises(RetryableError) as caught:
        put_records(faulty, stream, payloads(25), sleep=fake.sleep, max_attempts=3, rng=random.Random(7))

    message = str(caught.value)
    assert "20 records still failed after 3 PutRecords attempts" in message
    assert f"{THROTTLED} × 12, InternalFailure × 8" in message
    assert "5 other records were written" in message
    assert fake.slept == expected_delays(2)


@pytest.mark.integration
def test_a_throttled_put_call_is_repeated_whole(moto_kinesis: Any, stream: str) -> None:
    faulty, fake = FaultyKinesis(moto_kinesis), FakeTime(time.time())
    faulty.fail("put_records", THROTTLED, times=2)

    results = put_records(faulty, stream, payloads(12), sleep=fake.sleep, rng=random.Random(7))

    assert len(results) == 12
    assert [len(p["Records"]) for op, p in faulty.calls if op == "put_records"] == [12, 12, 12]
    assert fake.slept == expected_delays(2)
    assert len(list(read_stream(moto_kinesis, stream, sleep=fake.sleep, clock=fake.clock))) == 12


# -- pure: no server ---------------------------------------------------------------------------------


def offline_kinesis() -> Any:
    return client("kinesis", "http://127.0.0.1:9")  # port 9 (discard): never reached in these tests


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, rng=random.Random(1))
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], start=1):
        delay = policy.delay(attempt)
        assert ceiling / 2 <= delay <= ceiling
    with pytest.raises(ValueError, match="max_attempts"):
        kinesis_retry(max_attempts=0)


@pytest.mark.parametrize(
    "entry,problem",
    [
        (PutEntry(b"x" * (MAX_RECORD_BYTES - 2), "abc"), "1048577 bytes .* over the Kinesis record limit"),
        (PutEntry(b"x", ""), "partition key must have 1 to 256 characters, not 0"),
        (PutEntry(b"x", "k" * 257), "not 257"),
    ],
)
def test_put_rejects_an_entry_over_the_limits_before_sending_anything(entry: PutEntry, problem: str) -> None:
    kinesis = offline_kinesis()
    with Stubber(kinesis), pytest.raises(ValueError, match=f"entry 1: .*{problem}"):
        put_records(kinesis, "s", [PutEntry(b"ok", "k"), entry])


def test_start_position_and_read_options_are_checked() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        StartPosition.at_timestamp(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="only with it"):
        StartPosition("AT_TIMESTAMP")
    with pytest.raises(ValueError, match="only with it"):
        StartPosition("LATEST", datetime.now(UTC))
    with pytest.raises(ValueError, match="end_time must be a timezone-aware"):
        read_stream(offline_kinesis(), "s", end_time=datetime.now() + timedelta(1))
    with pytest.raises(ValueError, match="limit"):
        read_stream(offline_kinesis(), "s", limit=10_001)


def test_list_shards_pages_with_the_next_token_alone() -> None:
    kinesis = offline_kinesis()
    fake = FakeTime(time.time())
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
    shard = {
        "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
        "SequenceNumberRange": {"StartingSequenceNumber": "1"},
    }
    summary = {
        "StreamName": "s",
        "StreamARN": arn,
        "StreamStatus": "ACTIVE",
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": datetime.now(UTC),
        "EnhancedMonitoring": [],
        "OpenShardCount": 2,
    }
    with Stubber(kinesis) as stub:
        stub.add_response(
            "describe_stream_summary", {"StreamDescriptionSummary": summary}, {"StreamName": "s"}
        )
        for _ in range(2):  # the first listing, and the one that confirms "caught up"
            stub.add_response(
                "list_shards", {"Shards": [{**shard, "ShardId": "a"}], "NextToken": "t1"}, {"StreamName": "s"}
            )
            stub.add_response("list_shards", {"Shards": [{**shard, "ShardId": "b"}]}, {"NextToken": "t1"})
            if _ == 1:
                break
            for shard_id in ("a", "b"):
                stub.add_response(
                    "get_shard_iterator",
                    {"ShardIterator": f"it-{shard_id}"},
                    {"StreamName": "s", "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"},
                )
                stub.add_response(
                    "get_records",
                    {"Records": [], "NextShardIterator": f"it-{shard_id}", "MillisBehindLatest": 0},
                    {"ShardIterator": f"it-{shard_id}", "Limit": 10_000},
                )
        progress: list[str] = []
        records = list(
            read_stream(
                kinesis,
                "s",
                sleep=fake.sleep,
                clock=fake.clock,
                on_shard_progress=lambda p: progress.append(p.shard_id),
            )
        )
        stub.assert_no_pending_responses()
    assert records == []
    assert progress == ["a", "b"]


def test_create_stream_gives_up_on_a_stream_that_stays_creating() -> None:
    kinesis, fake = offline_kinesis(), FakeTime(time.time())
    summary = {
        "StreamName": "s",
        "StreamARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
        "StreamStatus": "CREATING",
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": datetime.now(UTC),
        "EnhancedMonitoring": [],
        "OpenShardCount": 0,
    }
    with Stubber(kinesis) as stub:
        stub.add_response("create_stream", {})
        for _ in range(5):
            stub.add_response("describe_stream_summary", {"StreamDescriptionSummary": summary})
        with pytest.raises(RetryableError, match="stream s is still CREATING after 1 s"):
            create_stream(kinesis, "s", 2, timeout=1.0, poll_interval=0.2, sleep=fake.sleep)
        stub.assert_no_pending_responses()
    assert fake.slept == [0.2] * 5
