"""``qldbstream verify --stream`` on real local Kinesis servers: a simulated ledger with known
tampering, duplicates and reordering, put into a multi-shard stream (resharded mid-way on
kinesis-local), read back from every shard and verified with exactly the expected verdicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qldbstream.cli import main
from qldbstream.io.kinesis_writer import PutEntry, put_records
from tests.support.aws import client, kinesis_stream, wait_until_active
from tests.support.streams import simulation

pytestmark = pytest.mark.integration


def expected_failures(sim: Any) -> list[tuple[str, int]]:
    return sorted((f.check, f.sequence_no) for f in sim.expected.failures if not f.requires_parameters)


def verify_stream(capsys: pytest.CaptureFixture[str], endpoint: str, name: str) -> tuple[int, dict[str, Any]]:
    code = main(
        [
            "verify",
            "--json",
            "--no-progress",
            "--stream",
            name,
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
        ]
    )
    return code, json.loads(capsys.readouterr().out)


def found_failures(report: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((f["check"], f["blockSequenceNo"]) for f in report["failures"])


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_verify_a_live_stream_with_known_tampering(
    kinesis_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(
        60,
        seed=21,
        shards=3,
        duplicates=0.05,
        reorder=3,
        tampers=("Transactions#4:data.amount", "block=30:previousBlockHash"),
    )
    kinesis = client("kinesis", kinesis_server.endpoint)
    with kinesis_stream(kinesis, 3) as name:
        put_records(kinesis, name, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
        code, report = verify_stream(capsys, kinesis_server.endpoint, name)
    assert code == 1
    assert found_failures(report) == expected_failures(sim)
    assert report["errors"] == []
    assert report["checks"]["V1"]["failed"] == 0 and report["checks"]["V1"]["passed"] >= len(
        sim.journal.blocks
    )
    assert report["records"] >= len(sim.records)  # duplicates included


def test_verify_follows_child_shards_after_a_reshard(
    kinesis_local: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(50, seed=22, shards=2, aggregate=False, tampers=("Accounts#2:data.balance",))
    kinesis = client("kinesis", kinesis_local.endpoint)
    entries = [PutEntry(d.data, d.partition_key) for d in sim.deliveries]
    half = len(entries) // 2
    with kinesis_stream(kinesis, 2) as name:
        put_records(kinesis, name, entries[:half])
        kinesis.update_shard_count(StreamName=name, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
        wait_until_active(kinesis, name)
        put_records(kinesis, name, entries[half:])
        shards = kinesis.list_shards(StreamName=name)["Shards"]
        assert len(shards) == 6  # 2 closed parents + 4 children
        code, report = verify_stream(capsys, kinesis_local.endpoint, name)
    assert code == 1
    assert found_failures(report) == expected_failures(sim)
    assert report["records"] == len(sim.records)  # every record once: parents then children
    assert [g for g in report["gaps"] if g["kind"] == "missing-blocks"] == []
    assert report["checks"]["V9"]["passed"] == len(sim.journal.blocks) - 1
