"""The real KCL MultiLangDaemon (amazon-kclpy, KCL 3) against kinesis-local + moto, with a v3 processor.

Needs the daemon's jars: ``deploy/kcl/install.sh`` (Java 17 + Maven). Without them the tests fail with
the command to run; they never skip, because CI must run them.

* happy path: one daemon reads a 4-shard stream from TRIM_HORIZON; every record is processed exactly
  once, in order per shard, and each shard's checkpoint in the lease table is its last sequence number;
* takeover: two daemons (two worker ids) share the stream; the one that is not the KCL 3 leader is
  SIGKILLed while records are still being put; the leader reassigns its leases after they expire and
  every record is processed at least once (duplicates after the kill are allowed, and reported).

The KCL waits a random 1-30 s (hard-coded) before it fills an empty lease table, so the first record
arrives 5-40 s after start-up; each test takes ~30-70 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError

from tests.support.aws import client, kinesis_stream
from tests.support.kcl import DaemonSettings, KclDaemon, start_daemon, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESSOR = Path(__file__).with_name("kcl_smoke_processor.py")
SHARDS = 4
#: From start-up to the last record: the KCL's random wait (<=30 s) + lease assignment + reads.
ALL_RECORDS_TIMEOUT = 100.0
#: The takeover test's producer stops here at the latest (kinesis-local slows down as shards fill).
MAX_TAKEOVER_RECORDS = 1500

T = TypeVar("T")
Put = tuple[str, str, bytes]  # (shard id, sequence number, data)


def _put(kinesis: Any, stream: str, start: int, count: int) -> list[Put]:
    records: list[dict[str, Any]] = [
        {"Data": f"record-{i}".encode(), "PartitionKey": f"pk-{i}"} for i in range(start, start + count)
    ]
    response = kinesis.put_records(StreamName=stream, Records=records)
    assert response["FailedRecordCount"] == 0, response
    return [
        (r["ShardId"], r["SequenceNumber"], rec["Data"])
        for r, rec in zip(response["Records"], records, strict=True)
    ]


def _output(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _processed(lines: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((r["shard"], r["sequence_number"]) for r in lines if r["event"] == "record")


def _leases(dynamodb: Any, table: str) -> dict[str, dict[str, str]]:
    """leaseKey -> {attribute: value} of the KCL lease table (empty while it does not exist)."""
    try:
        items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    except ClientError:
        return {}
    return {item["leaseKey"]["S"]: {k: next(iter(v.values())) for k, v in item.items()} for item in items}


def _wait_until(what: str, timeout: float, probe: Callable[[], T | None], daemons: list[KclDaemon]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        for daemon in daemons:
            if not daemon.alive() and not daemon.stopped:  # died by itself
                pytest.fail(f"daemon {daemon.worker_id} exited: {daemon.log_path}\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.worker_id} ({d.log_path})\n{d.log_tail(25)}" for d in daemons)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(0.3)


def _settings(
    stream: str, app: str, worker: str, kinesis_endpoint: str, moto_endpoint: str
) -> DaemonSettings:
    return DaemonSettings(
        stream_name=stream,
        application_name=app,
        worker_id=worker,
        executable=(sys.executable, str(PROCESSOR)),
        kinesis_endpoint=kinesis_endpoint,
        dynamodb_endpoint=moto_endpoint,
    )


@contextlib.contextmanager
def _kcl_tables(dynamodb: Any, app: str) -> Iterator[str]:
    """The lease table's name; drops the daemon's three tables afterwards (moto lives for the session)."""
    try:
        yield app
    finally:
        for table in (app, f"{app}-WorkerMetricStats", f"{app}-CoordinatorState"):
            with contextlib.suppress(ClientError):
                dynamodb.delete_table(TableName=table)


def _report(daemon: KclDaemon, **numbers: object) -> None:
    details = " ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"[kcl {daemon.worker_id}] peak_rss_kb={daemon.peak_rss_kb} {details}")


def test_one_daemon_processes_every_record_once_and_checkpoints(
    kinesis_local: Any, moto_server: Any, tmp_path: Path
) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    output = tmp_path / "processed.jsonl"
    with (
        kinesis_stream(kinesis, SHARDS, prefix="kcl-smoke") as stream,
        _kcl_tables(dynamodb, f"{stream}-app") as table,
    ):
        put = [p for start in range(0, 300, 100) for p in _put(kinesis, stream, start, 100)]
        last_per_shard = {shard: max(int(seq) for s, seq, _ in put if s == shard) for shard, _, _ in put}
        wanted = {(shard, seq) for shard, seq, _ in put}

        daemon = start_daemon(
            _settings(stream, table, "worker-1", kinesis_local.endpoint, moto_server.endpoint),
            tmp_path,
            env={"KCL_SMOKE_OUTPUT": str(output), "KCL_SMOKE_WORKER": "worker-1"},
        )
        try:
            initialized = daemon.wait_for_log(r"Initialization complete", ALL_RECORDS_TIMEOUT)
            _wait_until(
                "every record to be processed",
                ALL_RECORDS_TIMEOUT,
                lambda: wanted <= set(_processed(_output(output))),
                [daemon],
            )
            all_seen = time.monotonic() - daemon.started_at

            def checkpointed() -> dict[str, dict[str, str]] | None:
                leases = _leases(dynamodb, table)
                done = all(leases.get(s, {}).get("checkpoint") == str(n) for s, n in last_per_shard.items())
                return leases if done else None

            leases = _wait_until(
                "each shard's checkpoint to reach its last record", 30, checkpointed, [daemon]
            )
            rss = daemon.rss_kb()
        finally:
            daemon.stop()
        _report(daemon, initialized_s=f"{initialized:.1f}", all_records_s=f"{all_seen:.1f}", rss_kb=rss)

    lines = _output(output)
    records = [r for r in lines if r["event"] == "record"]
    counts = Counter((r["shard"], r["sequence_number"], r["sub_sequence_number"]) for r in records)
    assert {(s, q) for s, q, _ in counts} == wanted
    assert [key for key, n in counts.items() if n > 1] == [], "a record was processed twice"
    sent = {(shard, seq): data for shard, seq, data in put}
    assert all(base64.b64decode(r["data"]) == sent[r["shard"], r["sequence_number"]] for r in records)
    for shard in last_per_shard:  # one processor per shard, in sequence-number order
        sequence = [int(r["sequence_number"]) for r in records if r["shard"] == shard]
        assert sequence == sorted(sequence), f"{shard} out of order"
    assert {r["shard"] for r in lines if r["event"] == "initialize"} == set(last_per_shard)
    assert set(leases) == set(last_per_shard)
    for shard, lease in leases.items():
        assert lease["checkpoint"] == str(last_per_shard[shard])
        assert lease["checkpointSubSequenceNumber"] == "0"
        assert lease["leaseOwner"] == "worker-1"


def test_survivor_takes_over_the_leases_of_a_killed_daemon(
    kinesis_local: Any, moto_server: Any, tmp_path: Path
) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    output = tmp_path / "processed.jsonl"
    workers = ("worker-a", "worker-b")
    with (
        kinesis_stream(kinesis, SHARDS, prefix="kcl-takeover") as stream,
        _kcl_tables(dynamodb, f"{stream}-app") as table,
    ):
        put = _put(kinesis, stream, 0, 100)
        daemons = {
            w: start_daemon(
                _settings(stream, table, w, kinesis_local.endpoint, moto_server.endpoint),
                tmp_path,
                env={"KCL_SMOKE_OUTPUT": str(output), "KCL_SMOKE_WORKER": w},
            )
            for w in workers
        }
        # Records keep flowing from before the victim processes anything until after it is killed.
        stop_producing = threading.Event()

        def produce() -> None:
            start = len(put)
            while not stop_producing.is_set() and start < MAX_TAKEOVER_RECORDS:
                put.extend(_put(kinesis, stream, start, 20))
                start += 20
                stop_producing.wait(0.25)

        producer = threading.Thread(target=produce, name="kcl-takeover-producer", daemon=True)
        try:
            # KCL 3: only the leader assigns leases, and its leader lock lasts 2 minutes (hard-coded in
            # 3.1.3), so the test kills the other worker, once it holds leases and has checkpointed.
            _wait_until(
                "both workers to own leases",
                ALL_RECORDS_TIMEOUT,
                lambda: (
                    {lease.get("leaseOwner") for lease in _leases(dynamodb, table).values()} == set(workers)
                ),
                list(daemons.values()),
            )
            producer.start()
            leader = _wait_until(
                "a leader",
                30,
                lambda: next((w for w, d in daemons.items() if d.is_leader()), None),
                list(daemons.values()),
            )
            victim = next(w for w in workers if w != leader)
            _wait_until(
                f"{victim} to process and checkpoint records",
                30,
                lambda: any(r["event"] == "checkpoint" and r["worker"] == victim for r in _output(output)),
                list(daemons.values()),
            )
            time.sleep(1.0)
            before_kill = _processed(_output(output))
            killed_at = time.monotonic()
            daemons[victim].kill()
            time.sleep(2.0)  # records put while the victim's leases are orphaned
            stop_producing.set()
            producer.join(timeout=30)
            wanted = {(shard, seq) for shard, seq, _ in put}
            _wait_until(
                f"{leader} to own every lease and every record to be processed",
                ALL_RECORDS_TIMEOUT,
                lambda: (
                    {lease.get("leaseOwner") for lease in _leases(dynamodb, table).values()} == {leader}
                    and wanted <= set(_processed(_output(output)))
                ),
                list(daemons.values()),
            )
            takeover = time.monotonic() - killed_at
        finally:
            stop_producing.set()
            if producer.is_alive():
                producer.join(timeout=30)
            stop_all(daemons.values())

    lines = _output(output)
    counts = _processed(lines)
    by_victim = {
        (r["shard"], r["sequence_number"]) for r in lines if r["worker"] == victim and r["event"] == "record"
    }
    by_victim_before_kill = len(by_victim)
    missing = wanted - set(counts)
    duplicates = {key: n for key, n in counts.items() if n > 1}
    for worker, daemon in daemons.items():
        _report(
            daemon,
            role="leader" if worker == leader else "killed",
            processed_before_kill=sum(before_kill.values()),
            by_victim_before_kill=by_victim_before_kill,
            takeover_s=f"{takeover:.1f}",
            records=len(wanted),
            duplicates=sum(n - 1 for n in duplicates.values()),
        )
    assert missing == set(), f"{len(missing)} records were never processed"
    assert set(counts) == wanted
    assert by_victim, f"{victim} processed nothing before it was killed"
    # Duplicates are allowed, but only for records the killed worker may have processed without checkpointing.
    assert set(duplicates) <= by_victim
