"""The analytics sinks and state store against moto server: DynamoDB results (conditional overwrite
by revision), DynamoDB window state (chunked, generation-switched, fenced), Parquet on S3."""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest
from qldbstream_handlers.analytics import (
    TRANSACTION_VELOCITY,
    AnalyticsHandler,
    DynamoDBSink,
    DynamoDBStateStore,
    Pane,
    ParquetSink,
    WindowResult,
)
from qldbstream_handlers.analytics.state import decode_state, encode_state
from qldbstream_handlers.export.storage import S3Storage
from qldbstream_tools.simulate import Simulation

from qldbstream.core.errors import HaltShardError
from tests.handlers.test_analytics_bank import (
    Expected,
    expected_velocity,
    round_robin,
    run,
    setup,
)
from tests.support.aws import client
from tests.support.servers import MotoServer
from tests.support.streams import simulation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulation(160, seed=5, redactions=0)


@pytest.fixture
def dynamodb(moto_server: MotoServer) -> Any:
    return client("dynamodb", moto_server.endpoint)


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"analytics-{uuid.uuid4().hex[:8]}"
    DynamoDBSink.create_table(dynamodb, name)
    return name


def scan(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    return list(dynamodb.scan(TableName=table, ConsistentRead=True)["Items"])


def velocity_items(items: Sequence[dict[str, Any]]) -> Expected:
    out: Expected = {}
    for item in items:
        if not item["sk"]["S"].startswith("20"):
            continue  # state items share the table in one test
        v = item["values"]["M"]
        out[int(item["window_start_ms"]["N"])] = (
            int(v["transaction_count"]["N"]),
            int(v["unique_accounts"]["N"]),
            Decimal(v["total_amount"]["N"]),
        )
    return out


def test_dynamodb_results_and_state_survive_a_restart_exactly_once(
    sim: Simulation, dynamodb: Any, table: str
) -> None:
    work = list(round_robin(sim, 13))
    state = DynamoDBStateStore(dynamodb, table)  # results and state can share one table

    def handler() -> AnalyticsHandler:
        return setup(
            AnalyticsHandler(
                queries=[TRANSACTION_VELOCITY], sinks=[DynamoDBSink(dynamodb, table)], state=state
            )
        )

    half = len(work) // 2
    run(handler(), iter(work[:half]))
    restarted = handler()  # a new process: windows come back from DynamoDB
    run(restarted, iter(work[half - 2 :]))  # the last two batches again, as after a crash
    items = scan(dynamodb, table)
    assert velocity_items(items) == expected_velocity(sim)
    results = [i for i in items if i["pk"]["S"].startswith("transaction_velocity#")]
    assert all(i["final"]["BOOL"] and i["revision"]["N"] == "1" for i in results)
    assert results[0]["pk"]["S"] == "transaction_velocity#null"
    assert results[0]["sk"]["S"].endswith("Z") and "/" in results[0]["sk"]["S"]


def test_an_older_revision_never_overwrites_a_newer_one(dynamodb: Any, table: str) -> None:
    sink = DynamoDBSink(dynamodb, table)

    def pane(revision: int, n: int, final: bool) -> Pane:
        row = WindowResult("q", 0, 60_000, "G", revision, final, {"n": n, "total": None})
        return Pane("q", 0, 60_000, False, (row,), frozenset({"G"}), frozenset({"G"}))

    sink.write([pane(2, 7, True)], [])
    sink.write([pane(1, 5, False)], [])  # a stale replay
    sink.write([pane(2, 7, True)], [])  # the same revision again: harmless
    (item,) = scan(dynamodb, table)
    assert (item["revision"]["N"], item["values"]["M"]["n"]["N"], item["final"]["BOOL"]) == ("2", "7", True)
    assert item["values"]["M"]["total"] == {"NULL": True} and item["group"]["S"] == "G"


def test_dynamodb_state_is_chunked_switched_atomically_and_fenced(dynamodb: Any, table: str) -> None:
    store = DynamoDBStateStore(dynamodb, table)
    rng = random.Random(7)
    big = {"keys": [rng.randbytes(16).hex() for _ in range(30_000)]}  # ~0.5 MB compressed: 2 chunks
    blob = encode_state(big)
    assert len(blob) > 350_000
    store.save("h", blob)
    store.save("h", blob)
    assert decode_state(DynamoDBStateStore(dynamodb, table).load("h") or b"") == big
    chunks = [i for i in scan(dynamodb, table) if i["sk"]["S"].startswith("chunk#")]
    assert {c["sk"]["S"][:18] for c in chunks} == {"chunk#000000000002"} and len(chunks) == 2  # 1 is gone
    other = DynamoDBStateStore(dynamodb, table)
    other.load("h")
    store.save("h", encode_state({"v": 3}))
    with pytest.raises(HaltShardError, match="another consumer"):
        other.save("h", encode_state({"v": "stale"}))
    assert decode_state(DynamoDBStateStore(dynamodb, table).load("h") or b"") == {"v": 3}


def test_parquet_results_on_s3(sim: Simulation, moto_server: MotoServer) -> None:
    s3 = client("s3", moto_server.endpoint)
    bucket = f"analytics-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    storage = S3Storage(s3, bucket, "results/")
    sink = ParquetSink(storage, {"transaction_velocity": TRANSACTION_VELOCITY.aggregates}, compression="gzip")
    handler = setup(AnalyticsHandler(queries=[TRANSACTION_VELOCITY], sinks=[sink]))
    work = list(round_robin(sim, 20))
    run(handler, iter(work))
    run(handler, iter(work[-3:]))  # redelivered: files are rewritten, not added
    keys = storage.list()
    expected = expected_velocity(sim)
    assert len(keys) == len(expected) and all(k.startswith("transaction_velocity/date=") for k in keys)
    got: Expected = {}
    for key in keys:
        (row,) = pq.read_table(io.BytesIO(storage.get(key) or b"")).to_pylist()
        got[int(row["window_start"].timestamp() * 1000)] = (
            row["transaction_count"],
            row["unique_accounts"],
            row["total_amount"],
        )
    assert got == expected


def test_settings_build_the_aws_sinks_and_state(sim: Simulation, moto_server: MotoServer, table: str) -> None:
    dynamodb = client("dynamodb", moto_server.endpoint)
    s3 = client("s3", moto_server.endpoint)
    bucket = f"analytics-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    clients = {"dynamodb": dynamodb, "s3": s3}
    settings = {
        "preset": "transaction_velocity",
        "sinks": "dynamodb,parquet",
        "dynamodb_table": table,
        "parquet_path": f"s3://{bucket}/velocity",
        "state": f"dynamodb:{table}",
    }
    handler = setup(AnalyticsHandler(settings, clients=clients.__getitem__))
    run(handler, round_robin(sim, 50))
    assert velocity_items(scan(dynamodb, table)) == expected_velocity(sim)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="velocity/transaction_velocity/")
    assert len(listed["Contents"]) == len(expected_velocity(sim))


def test_lambda_containers_per_shard_write_the_exact_union_to_dynamodb(dynamodb: Any, table: str) -> None:
    """scope = shard on DynamoDB: one handler per shard (Lambda containers), interleaved, on a
    four-shard stream with duplicates and reordering, COMPLETED on one shard only, no drain: the
    results table holds one exact result per window, and every part is listed under its window."""
    from qldbstream_handlers.analytics import AnalyticsOptions

    from tests.handlers.messy import Delivery, deliver, shard_records
    from tests.handlers.test_analytics_messy import ledger_velocity

    messy = simulation(80, seed=31, redactions=0, shards=4, aggregate=False, duplicates=0.3, reorder=5)
    per_shard = shard_records(messy)
    state = DynamoDBStateStore(dynamodb, table)
    containers = {
        shard: setup(
            AnalyticsHandler(
                queries=[TRANSACTION_VELOCITY],
                sinks=[DynamoDBSink(dynamodb, table)],
                state=DynamoDBStateStore(dynamodb, table),
                options=AnalyticsOptions(scope="shard"),
            )
        )
        for shard in per_shard
    }
    queues = {s: [r[i : i + 15] for i in range(0, len(r), 15)] for s, r in per_shard.items()}
    rng, delivery = random.Random(3), Delivery()
    while any(queues.values()):
        shard = rng.choice([s for s, q in queues.items() if q])
        deliver(containers[shard], [(shard, queues[shard].pop(0))], delivery=delivery)
    items = scan(dynamodb, table)
    assert velocity_items(items) == ledger_velocity(messy)
    results = [i for i in items if i["pk"]["S"].startswith("transaction_velocity#")]
    assert results and all(i["pk"]["S"] == "transaction_velocity#null" for i in results)
    some = results[0]["window_start_ms"]["N"]
    members = state.members(f"analytics#transaction_velocity#{some}#{int(some) + 60_000}")
    assert members and set(members) <= set(per_shard)
    for member, revision in members.items():
        blob = state.read(f"analytics#{member}#pane#transaction_velocity#{some}#{int(some) + 60_000}")
        assert blob is not None and decode_state(blob)["revision"] == revision
