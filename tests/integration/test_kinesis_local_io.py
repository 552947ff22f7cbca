"""put_records and read_stream against real local Kinesis servers (kinesis-local and moto server).

The read/write contract runs on both servers. Resharding runs on kinesis-local, which reports shard end
and ``ChildShards`` like Kinesis; on moto it is expected to fail (see ``MOTO_RESHARD``). Record counts stay
small on purpose: kinesis-local's PutRecords gets slower as a shard fills up.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from qldbstream.core.errors import InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import LATEST, ShardProgress, StartPosition, read_stream
from qldbstream.io.kinesis_writer import PutEntry, PutResult, create_stream, put_records
from tests.support.aws import client, kinesis_stream, wait_until_active
from tests.support.servers import LocalServer

pytestmark = pytest.mark.integration

MOTO_RESHARD = pytest.mark.xfail(
    reason="moto never returns shard end / ChildShards, keeps routing puts to the closed parents, and copies "
    "the parents' records into a merged shard",
    strict=False,
)
#: Poll fast: these servers answer in milliseconds and the tests should too.
POLL = 0.02


@pytest.fixture
def kinesis(kinesis_server: LocalServer) -> Any:
    return client("kinesis", kinesis_server.endpoint)


def entries(prefix: str, count: int, keys: int = 40) -> list[PutEntry]:
    """``count`` records over ``keys`` partition keys; each payload names its key and its rank."""
    return [PutEntry(f"{prefix}:{i % keys}:{i}".encode(), f"pk-{i % keys}") for i in range(count)]


def read_all(kinesis: Any, stream: str, **options: Any) -> list[KinesisRecord]:
    return list(read_stream(kinesis, stream, poll_interval=POLL, **options))


def assert_exactly_once_in_key_order(records: Iterable[KinesisRecord], written: list[PutEntry]) -> None:
    by_key: dict[str, list[bytes]] = defaultdict(list)
    for record in records:
        by_key[record.partition_key].append(record.data)
    expected: dict[str, list[bytes]] = defaultdict(list)
    for entry in written:
        expected[entry.partition_key].append(entry.data)
    assert by_key == expected


def assert_parents_before_children(kinesis: Any, stream: str, records: list[KinesisRecord]) -> int:
    """Every record of a parent shard is yielded before any record of its child; returns the pairs seen."""
    positions: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        assert record.shard_id is not None
        positions[record.shard_id].append(index)
    pairs = 0
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        for parent in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")):
            if parent and positions[parent] and positions[shard["ShardId"]]:
                assert max(positions[parent]) < min(positions[shard["ShardId"]]), (parent, shard["ShardId"])
                pairs += 1
    return pairs


def reshard_to(kinesis: Any, stream: str, shards: int) -> None:
    kinesis.update_shard_count(StreamName=stream, TargetShardCount=shards, ScalingType="UNIFORM_SCALING")
    wait_until_active(kinesis, stream)


def open_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]


# -- the contract on both servers --------------------------------------------------------------------


def test_every_record_once_in_key_order_with_put_results(kinesis: Any) -> None:
    written = entries("a", 1200, keys=60)
    with kinesis_stream(kinesis, 4) as stream:
        before = time.time()
        results = put_records(kinesis, stream, written)
        records = read_all(kinesis, stream)
        arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]

    assert len(records) == len(written)
    assert_exactly_once_in_key_order(records, written)
    # results are in input order: each names where its record was read from
    where = {r.data: (r.shard_id, r.sequence_number) for r in records}
    assert [(r.shard_id, r.sequence_number) for r in results] == [where[e.data] for e in written]
    assert len({r.shard_id for r in records}) == 4
    first = records[0]
    assert first.stream_arn == arn
    assert first.source == f"stream {stream}"
    assert first.explicit_hash_key is None
    assert first.approximate_arrival_timestamp is not None
    assert before - 5 < first.approximate_arrival_timestamp < time.time() + 5
    # within a shard, sequence numbers grow (as integers: moto's are "1", "2", ... "10")
    for shard_id in {r.shard_id for r in records}:
        seqs = [int(r.sequence_number) for r in records if r.shard_id == shard_id]
        assert seqs == sorted(seqs)


def test_explicit_hash_key_picks_the_shard(kinesis: Any) -> None:
    with kinesis_stream(kinesis, 2) as stream:
        low, high = open_shards(kinesis, stream)
        results = put_records(
            kinesis,
            stream,
            [
                PutEntry(b"low", "same-key", explicit_hash_key=low["HashKeyRange"]["StartingHashKey"]),
                PutEntry(b"high", "same-key", explicit_hash_key=high["HashKeyRange"]["StartingHashKey"]),
            ],
        )
    assert [r.shard_id for r in results] == [low["ShardId"], high["ShardId"]]


def test_at_timestamp_starts_after_the_earlier_records(kinesis: Any) -> None:
    earlier, later = entries("early", 60), entries("late", 60)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, earlier)
        time.sleep(0.05)  # arrival timestamps have millisecond precision
        boundary = datetime.now(UTC)
        time.sleep(0.05)
        put_records(kinesis, stream, later)
        records = read_all(kinesis, stream, start=StartPosition.at_timestamp(boundary))
    assert_exactly_once_in_key_order(records, later)


def test_end_time_stops_each_shard_at_the_first_later_record(kinesis: Any) -> None:
    earlier, later = entries("early", 60), entries("late", 60)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, earlier)
        time.sleep(0.05)
        boundary = datetime.now(UTC)
        time.sleep(0.05)
        put_records(kinesis, stream, later)
        progress: list[ShardProgress] = []
        records = read_all(kinesis, stream, end_time=boundary, on_shard_progress=progress.append)
    assert_exactly_once_in_key_order(records, earlier)
    assert {p.shard_id for p in progress if p.finished} == {r.shard_id for r in records}


def test_latest_reads_only_what_arrives_after_the_reader_started(kinesis: Any) -> None:
    old, new = entries("old", 50), entries("new", 50)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, old)
        puts = 0

        def sleep_then_put(seconds: float) -> None:
            nonlocal puts  # the reader is idle at the tip of every shard: write the new records now
            if puts == 0:
                put_records(kinesis, stream, new)
            puts += 1
            time.sleep(seconds)

        reader = read_stream(
            kinesis, stream, start=LATEST, until_caught_up=False, poll_interval=POLL, sleep=sleep_then_put
        )
        records = list(itertools.islice(reader, len(new)))
        reader.close()
    assert_exactly_once_in_key_order(records, new)


def test_progress_reports_lag_per_shard(kinesis: Any) -> None:
    with kinesis_stream(kinesis, 2) as stream:
        first, second = entries("one", 100), entries("two", 100)
        put_records(kinesis, stream, first)
        time.sleep(0.3)  # MillisBehindLatest is measured in arrival time
        put_records(kinesis, stream, second)
        progress: list[ShardProgress] = []
        records = read_all(kinesis, stream, limit=20, on_shard_progress=progress.append)

    assert len(records) == 200
    assert any(p.millis_behind_latest and p.millis_behind_latest > 0 for p in progress)
    last: dict[str, ShardProgress] = {p.shard_id: p for p in progress}
    assert set(last) == {r.shard_id for r in records}
    for shard_id, report in last.items():
        mine = [r for r in records if r.shard_id == shard_id]
        assert report.millis_behind_latest == 0
        assert report.records_read == len(mine)
        assert report.sequence_number == mine[-1].sequence_number
        assert not report.finished  # open shards are caught up, never finished


def test_create_stream_waits_for_active_and_can_accept_an_existing_one(kinesis: Any) -> None:
    name = f"create-{uuid.uuid4().hex[:12]}"
    arn = create_stream(kinesis, name, 3)
    try:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        assert (summary["StreamStatus"], summary["OpenShardCount"], summary["StreamARN"]) == (
            "ACTIVE",
            3,
            arn,
        )
        assert create_stream(kinesis, name, 3, exist_ok=True) == arn
        with pytest.raises(ClientError, match="ResourceInUseException"):
            create_stream(kinesis, name, 3)
    finally:
        kinesis.delete_stream(StreamName=name)


def test_missing_stream_is_an_input_error_naming_the_endpoint(
    kinesis: Any, kinesis_server: LocalServer
) -> None:
    with pytest.raises(
        InputError, match=f"stream no-such-stream does not exist at {kinesis_server.endpoint}"
    ):
        read_stream(kinesis, "no-such-stream")
    with pytest.raises(InputError, match="no-such-stream does not exist"):
        put_records(kinesis, "no-such-stream", entries("x", 1))


# -- resharding: kinesis-local reports shard end; moto does not --------------------------------------


def reshard_param(server: str) -> Any:
    return pytest.param(server, marks=MOTO_RESHARD) if server == "moto" else server


@pytest.fixture(params=[reshard_param("kinesis-local"), reshard_param("moto")])
def reshard_kinesis(request: pytest.FixtureRequest) -> Any:
    server: LocalServer = request.getfixturevalue(
        "kinesis_local" if request.param == "kinesis-local" else "moto_server"
    )
    return client("kinesis", server.endpoint)


def test_update_shard_count_parents_before_children(reshard_kinesis: Any) -> None:
    kinesis = reshard_kinesis
    before, after = entries("before", 300), entries("after", 300)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, before)
        reshard_to(kinesis, stream, 4)
        results = put_records(kinesis, stream, after)
        records = read_all(kinesis, stream, limit=40)  # several batches per closed parent
        pairs = assert_parents_before_children(kinesis, stream, records)
        children = {s["ShardId"] for s in open_shards(kinesis, stream)}

    assert_exactly_once_in_key_order(records, before + after)
    assert {r.shard_id for r in results} == children  # the new records went to the children
    assert pairs == 4


def test_split_then_merge_parents_before_children(reshard_kinesis: Any) -> None:
    kinesis = reshard_kinesis
    batches = [entries("first", 150), entries("split", 150), entries("merged", 150)]
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, batches[0])
        low, _ = open_shards(kinesis, stream)
        start, end = int(low["HashKeyRange"]["StartingHashKey"]), int(low["HashKeyRange"]["EndingHashKey"])
        kinesis.split_shard(
            StreamName=stream, ShardToSplit=low["ShardId"], NewStartingHashKey=str((start + end) // 2)
        )
        wait_until_active(kinesis, stream)
        put_records(kinesis, stream, batches[1])
        # merge the upper half of the split shard with the old upper shard: a child of two parents
        ordered = sorted(
            open_shards(kinesis, stream), key=lambda s: int(s["HashKeyRange"]["StartingHashKey"])
        )
        kinesis.merge_shards(
            StreamName=stream, ShardToMerge=ordered[1]["ShardId"], AdjacentShardToMerge=ordered[2]["ShardId"]
        )
        wait_until_active(kinesis, stream)
        put_records(kinesis, stream, batches[2])
        records = read_all(kinesis, stream, limit=20)  # small batches: shards interleave
        pairs = assert_parents_before_children(kinesis, stream, records)

    assert_exactly_once_in_key_order(records, [e for batch in batches for e in batch])
    assert pairs >= 4  # low → 2 children; one child + old upper → the merged shard


def test_reshard_while_reading_follows_the_children(reshard_kinesis: Any) -> None:
    kinesis = reshard_kinesis
    before, after = entries("before", 200), entries("after", 200)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, before)
        reader: Iterator[KinesisRecord] = read_stream(kinesis, stream, limit=25, poll_interval=POLL)
        records = list(itertools.islice(reader, 60))  # partway through both parents
        reshard_to(kinesis, stream, 4)
        put_records(kinesis, stream, after)
        records.extend(reader)
        pairs = assert_parents_before_children(kinesis, stream, records)

    assert_exactly_once_in_key_order(records, before + after)
    assert pairs == 4


def test_moto_closed_parents_end_at_their_ending_sequence_number(moto_server: LocalServer) -> None:
    """moto never reports shard end, and still routes puts to the closed parents; the reader must end them."""
    kinesis = client("kinesis", moto_server.endpoint)
    before, after = entries("before", 100), entries("after", 100)
    with kinesis_stream(kinesis, 2) as stream:
        put_records(kinesis, stream, before)
        reshard_to(kinesis, stream, 4)
        put_records(kinesis, stream, after)
        ending = {
            s["ShardId"]: s["SequenceNumberRange"]["EndingSequenceNumber"]
            for s in kinesis.list_shards(StreamName=stream)["Shards"]
            if "EndingSequenceNumber" in s["SequenceNumberRange"]
        }
        progress: list[ShardProgress] = []
        records = read_all(kinesis, stream, on_shard_progress=progress.append)

    assert_exactly_once_in_key_order(records, before + after)
    assert len(ending) == 2
    for parent, last in ending.items():
        reports = [p for p in progress if p.shard_id == parent]
        # one GetRecords call: the batch that reached the ending sequence number finished the shard
        assert [(p.sequence_number, p.finished) for p in reports] == [(last, True)]


# -- writing: the batching limits (moto enforces 500 records and 5 MiB per call; kinesis-local does not) --


@pytest.mark.parametrize("count,size,calls", [(1201, 10, 3), (12, 1024 * 1024 - 100, 3)])
def test_put_records_splits_calls_at_500_records_and_5_mib(
    moto_server: LocalServer, count: int, size: int, calls: int
) -> None:
    kinesis = client("kinesis", moto_server.endpoint)
    seen: list[int] = []
    kinesis.meta.events.register(
        "provide-client-params.kinesis.PutRecords", lambda params, **_: seen.append(len(params["Records"]))
    )
    written = [PutEntry(bytes([i % 256]) * size, f"k{i:03}") for i in range(count)]
    with kinesis_stream(kinesis, 1) as stream:
        results: list[PutResult] = put_records(kinesis, stream, written)
        records = read_all(kinesis, stream)
    assert len(seen) == calls
    assert sum(seen) == count
    assert [r.sequence_number for r in results] == [r.sequence_number for r in records]
    assert [r.data for r in records] == [e.data for e in written]
