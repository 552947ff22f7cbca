"""The qldbstream KCL worker end to end: ``qldbstream kcl`` runs the real MultiLangDaemon (KCL 3.1.3) over
kinesis-local and moto server, with ``python -m qldbstream.kcl`` as the record processor, the shared
DynamoDB de-duplication store, a directory DLQ and an idempotent DynamoDB test sink
(:mod:`tests.integration.kcl_worker_sink`). Data: simulated QLDB journal streams, KPL-aggregated as QLDB
writes them, with duplicates, reordering and poison records.

Two daemon runs, each shared by several tests (a module-scoped fixture runs the scenario and records what
happened; the tests check one property each):

* **takeover + resharding** - two workers over a 4-shard stream. The stream is resharded to 8 shards
  (UpdateShardCount) while both run and records keep coming; then the worker that is not the KCL 3 leader
  is SIGKILLed (its leader lock is a hard-coded 2 minutes, so the leader must survive) and the survivor
  takes its leases. Every side effect lands exactly once, children after their parents, and the poison
  records (a tampered revision, a KPL aggregate with a bad MD5) are in the DLQ with full envelopes.
* **outages** - one worker, one shard: the sink refuses writes (the breaker opens; the checkpoint stays
  before the stuck record), then the DLQ is unavailable when the poison record comes (the checkpoint
  stays right before it), then both recover and everything lands.

What cannot be tested here: throttling on the KCL path happens inside the Java daemon (GetRecords and
lease-table writes are retried by the KCL; kinesis-local and moto never throttle), so only the
processor's handling of a ``ThrottlingException`` checkpoint reply is tested, with a fake daemon, in
tests/unit/test_kcl_processor.py. Needs the daemon's jars (``make kcl``) and kinesis-local (``make node``).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError
from qldbstream_tools.simulate import Simulation
from qldbstream_tools.simulate.output import put_to_stream

from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import decode
from qldbstream.core.errors import DeaggregationError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.gate_dynamodb import DynamoDBGateStore
from qldbstream.io.kinesis_writer import PutResult, create_stream
from tests.integration.kcl_worker_sink import create_sink_table, effect_key, read_sink
from tests.support.aws import client, wait_until_active
from tests.support.kcl import FAST_TEST_PROPERTIES, JVM_OPTIONS, KclDaemon, stop_all
from tests.support.servers import REPO_ROOT, LocalServer
from tests.support.streams import simulation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")
#: The record processor: short retry budgets and backoffs so that recoveries show within seconds.
PROCESSOR = f"{sys.executable} -m qldbstream.kcl --call-budget 2 --halt-backoff 0.5 --halt-backoff-cap 2"
#: From start-up to the first record: the KCL's random 1-30 s wait for an empty lease table, then leases.
START_TIMEOUT = 90.0
Position = tuple[int, int]

_started: list[KclDaemon] = []
#: A scenario that failed once fails the other tests that share it at once (pytest would run it again).
_failed: dict[str, str] = {}


@contextlib.contextmanager
def scenario(name: str) -> Iterator[None]:
    if name in _failed:
        pytest.fail(f"the {name} run failed already:\n{_failed[name]}", pytrace=False)
    try:
        yield
    except BaseException as exc:
        _failed[name] = str(exc)[:4000]
        raise


@atexit.register
def _kill_leftovers() -> None:
    for daemon in _started:
        with contextlib.suppress(Exception):
            daemon.kill()


# --- workers ------------------------------------------------------------------------------------------


def start_worker(name: str, work_dir: Path, settings: dict[str, str]) -> KclDaemon:
    """``qldbstream kcl`` (the launcher, which runs the JVM in its process group) as one worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLDBSTREAM_", "JAVA_TOOL"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(REPO_ROOT),
        **settings,
        "QLDBSTREAM_HANDLER_SINK__WORKER": name,
    }
    properties = work_dir / f"{name}.properties"
    command = [sys.executable, "-m", "qldbstream.cli.kcl", "--worker-id", name]
    command += ["--properties-file", str(properties), *(f"--jvm-option={o}" for o in JVM_OPTIONS)]
    for key, value in {**FAST_TEST_PROPERTIES, "executableName": PROCESSOR}.items():
        command += ["--set", f"{key}={value}"]
    log_path = work_dir / f"{name}.log"
    log = log_path.open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=work_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # launcher, JVM and record processors share this group: kill() reaches all
    )
    daemon = KclDaemon(name, process, properties, log_path, started, log)
    _started.append(daemon)
    return daemon


def settings_for(
    stream: str, kinesis: LocalServer, moto: LocalServer, work_dir: Path, **extra: str
) -> dict[str, str]:
    return {
        "QLDBSTREAM_STREAM_NAME": stream,
        "QLDBSTREAM_REGION": "us-east-1",
        "QLDBSTREAM_APPLICATION_NAME": f"{stream}-app",
        "QLDBSTREAM_KINESIS_ENDPOINT_URL": kinesis.endpoint,
        "QLDBSTREAM_DYNAMODB_ENDPOINT_URL": moto.endpoint,
        "QLDBSTREAM_DLQ": f"dir:{work_dir / 'dlq'}",
        "QLDBSTREAM_DEDUPE_STORE": f"dynamodb:{stream}-dedupe",
        # one record processor per shard: a block summary and its revisions meet in the shared store
        "QLDBSTREAM_GATE_STORE": f"dynamodb:{stream}-gate",
        # Revisions of one document land on different shards: deliver a late one rather than drop it.
        "QLDBSTREAM_LATE_POLICY": "deliver-late",
        "QLDBSTREAM_RETRY_MAX_ATTEMPTS": "2",
        "QLDBSTREAM_RETRY_BASE_DELAY_MS": "50",
        "QLDBSTREAM_BREAKER_FAILURES": "3",
        "QLDBSTREAM_BREAKER_RECOVERY_SECONDS": "2",
        "QLDBSTREAM_LOG_FORMAT": "text",
        "QLDBSTREAM_HANDLERS": "tests.integration.kcl_worker_sink:sink",
        "QLDBSTREAM_HANDLER_SINK__TABLE": f"{stream}-sink",
        "QLDBSTREAM_HANDLER_SINK__ENDPOINT": moto.endpoint,
        **extra,
    }


@contextlib.contextmanager
def tables(dynamodb: Any, moto: LocalServer, stream: str) -> Iterator[None]:
    """The sink and de-duplication tables; afterwards drops them and the KCL's three tables."""
    create_sink_table(moto.endpoint, f"{stream}-sink")
    DynamoDBDedupeStore.create_table(dynamodb, f"{stream}-dedupe")
    DynamoDBGateStore.create_table(dynamodb, f"{stream}-gate")
    try:
        yield
    finally:
        app = f"{stream}-app"
        for table in (
            f"{stream}-sink",
            f"{stream}-dedupe",
            f"{stream}-gate",
            app,
            f"{app}-WorkerMetricStats",
            f"{app}-CoordinatorState",
        ):
            with contextlib.suppress(ClientError):
                dynamodb.delete_table(TableName=table)


@contextlib.contextmanager
def stream_of(kinesis: Any, shards: int, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{os.urandom(6).hex()}"
    create_stream(kinesis, name, shards)
    try:
        yield name
    finally:
        with contextlib.suppress(ClientError):
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def leases(dynamodb: Any, table: str) -> dict[str, dict[str, str]]:
    """leaseKey -> {attribute: value} of the lease table (empty while it does not exist)."""
    try:
        items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    except ClientError:
        return {}
    return {
        item["leaseKey"]["S"]: {k: str(next(iter(v.values()))) for k, v in item.items()} for item in items
    }


def open_leases(table: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """The leases of shards not finished yet (a SHARD_END lease keeps its last owner)."""
    return [lease for lease in table.values() if lease.get("checkpoint") != "SHARD_END"]


def checkpoint_of(lease: dict[str, str]) -> Position | str:
    value = lease.get("checkpoint", "")
    return (int(value), int(lease.get("checkpointSubSequenceNumber", "0"))) if value.isdigit() else value


def wait_until(what: str, timeout: float, probe: Callable[[], T | None], daemons: Sequence[KclDaemon]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        for daemon in daemons:
            if not daemon.alive() and not daemon.stopped:
                pytest.fail(f"worker {daemon.worker_id} exited: {daemon.log_path}\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.worker_id} ({d.log_path})\n{d.log_tail(30)}" for d in daemons)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(0.3)


def dead_letters(work_dir: Path) -> list[dict[str, Any]]:
    directory = work_dir / "dlq"
    if not directory.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


# --- what the stream holds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRecordInfo:
    """One user record as the KCL hands it over: its position, its effect key, whether it is poison."""

    position: Position
    shard: str
    key: str | None
    poison: str | None  # "deaggregate" | "verify" | None
    partition_key: str
    data: bytes


def user_records(
    sim: Simulation, puts: Sequence[PutResult], tampered: set[str], upto: int | None = None
) -> list[UserRecordInfo]:
    """Every user record put (KCL's view: a corrupt aggregate is one record), in put order.

    ``puts`` answers the first ``upto`` deliveries (all of them by default)."""
    out = []
    for delivery, put in zip(sim.deliveries[:upto], puts, strict=True):
        kr = KinesisRecord(delivery.data, put.sequence_number, delivery.partition_key, put.shard_id)
        seq = int(put.sequence_number)
        try:
            users = deaggregate(kr)
        except DeaggregationError:
            out.append(
                UserRecordInfo(
                    (seq, 0), put.shard_id, None, "deaggregate", delivery.partition_key, delivery.data
                )
            )
            continue
        for user in users:
            key = effect_key(decode(user))
            poison = "verify" if key in tampered else None
            out.append(
                UserRecordInfo(
                    (seq, user.sub_sequence_number), put.shard_id, key, poison, user.partition_key, user.data
                )
            )
    return out


def tampered_keys(sim: Simulation) -> set[str]:
    return {f"rev#{f.document_id}#{f.version}" for f in sim.expected.failing("V2")}


def poison_delivery_index(sim: Simulation, tampered: set[str]) -> int:
    """The index of the first delivery that carries a tampered revision."""
    for index, delivery in enumerate(sim.deliveries):
        kr = KinesisRecord(delivery.data, "0", delivery.partition_key, "shardId-000000000000")
        if any(effect_key(decode(user)) in tampered for user in deaggregate(kr)):
            return index
    raise AssertionError("the simulation has no tampered revision")


def effects(records: Sequence[UserRecordInfo]) -> set[str]:
    return {r.key for r in records if r.key is not None and r.poison is None}


# --- run 1: two workers, resharding, a SIGKILL ------------------------------------------------------------


@dataclass
class TakeoverRun:
    sim: Simulation
    records: list[UserRecordInfo]
    sink: dict[str, dict[str, Any]]
    letters: list[dict[str, Any]]
    leases: dict[str, dict[str, str]]
    shards: list[dict[str, Any]]
    leader: str
    victim: str
    victim_effects_before_kill: int
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def takeover(
    kinesis_local: LocalServer, moto_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> TakeoverRun:
    with scenario("takeover"):
        return run_takeover(kinesis_local, moto_server, tmp_path_factory.mktemp("kcl-takeover"))


def run_takeover(kinesis_local: LocalServer, moto_server: LocalServer, work_dir: Path) -> TakeoverRun:
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    sim = simulation(
        100,
        seed=11,
        shards=4,
        duplicates=0.1,
        reorder=3,
        tampers=("Transactions#5:data.amount", "kpl=30:md5"),
    )
    assert sim.expected.unreadable == (30,) and len(tampered_keys(sim)) == 1
    n = len(sim.deliveries)
    phases = [
        sim.deliveries[: 2 * n // 5],
        sim.deliveries[2 * n // 5 : 7 * n // 10],
        sim.deliveries[7 * n // 10 :],
    ]
    timings: dict[str, float] = {}
    with stream_of(kinesis, 4, "kcl-takeover") as stream, tables(dynamodb, moto_server, stream):
        settings = settings_for(stream, kinesis_local, moto_server, work_dir)
        puts = put_to_stream(kinesis, stream, phases[0])
        started = time.monotonic()
        daemons = {w: start_worker(w, work_dir, settings) for w in ("worker-a", "worker-b")}
        producer: threading.Thread | None = None
        try:
            table = f"{stream}-app"
            wait_until(
                "both workers to own leases",
                START_TIMEOUT,
                lambda: (
                    {lease.get("leaseOwner") for lease in leases(dynamodb, table).values()} == set(daemons)
                ),
                list(daemons.values()),
            )
            timings["both_own_leases_s"] = time.monotonic() - started
            leader = wait_until(
                "a leader",
                30,
                lambda: next((w for w, d in daemons.items() if d.is_leader()), None),
                list(daemons.values()),
            )
            victim = next(w for w in daemons if w != leader)

            def victim_reading() -> bool:
                # KCL 3 hands a lease over gracefully: the table names the new owner while the old one still
                # reads the shard. Records put before the new owner's processor starts may all be taken by
                # the old owner, so wait for the victim's processors to start on every shard it owns.
                owned = [
                    k for k, lease in leases(dynamodb, table).items() if lease.get("leaseOwner") == victim
                ]
                log = daemons[victim].log_text()
                return bool(owned) and all(f"shard {shard}: processing from" in log for shard in owned)

            wait_until(f"{victim} to start reading its shards", 60, victim_reading, list(daemons.values()))
            # More records while both run (the leader may have finished the first ones before the other
            # worker got its leases), then UpdateShardCount 4 -> 8 with records still coming.
            puts += put_to_stream(kinesis, stream, phases[1])
            wait_until(
                f"{victim} to write to the sink",
                60,
                lambda: any(
                    i["worker"] == victim for i in read_sink(moto_server.endpoint, f"{stream}-sink").values()
                ),
                list(daemons.values()),
            )
            kinesis.update_shard_count(StreamName=stream, TargetShardCount=8, ScalingType="UNIFORM_SCALING")
            wait_until_active(kinesis, stream)
            timings["resharded_s"] = time.monotonic() - started
            late: list[PutResult] = []
            producer = threading.Thread(target=lambda: late.extend(put_to_stream(kinesis, stream, phases[2])))
            producer.start()
            time.sleep(1.0)
            before_kill = read_sink(moto_server.endpoint, f"{stream}-sink")
            killed_at = time.monotonic()
            daemons[victim].kill()  # SIGKILL: JVM, launcher and record processors, as a crashed host
            timings["killed_s"] = killed_at - started
            producer.join(timeout=60)
            puts += late
            shards = kinesis.list_shards(StreamName=stream)["Shards"]
            records = user_records(sim, puts, tampered_keys(sim))
            wanted = effects(records)

            def done() -> bool:
                owners = {lease.get("leaseOwner") for lease in open_leases(leases(dynamodb, table))}
                return (
                    owners == {leader}
                    and set(read_sink(moto_server.endpoint, f"{stream}-sink")) >= wanted
                    and {letter["stage"] for letter in dead_letters(work_dir)} == {"deaggregate", "verify"}
                )

            wait_until(f"{leader} to own every lease and every effect to land", 120, done, [daemons[leader]])
            timings["takeover_and_all_effects_s"] = time.monotonic() - killed_at
            time.sleep(2.0)  # anything still in flight would show now
            run = TakeoverRun(
                sim,
                records,
                read_sink(moto_server.endpoint, f"{stream}-sink"),
                dead_letters(work_dir),
                leases(dynamodb, table),
                shards,
                leader,
                victim,
                sum(1 for i in before_kill.values() if i["worker"] == victim),
                timings,
            )
        finally:
            if producer is not None and producer.is_alive():
                producer.join(timeout=60)
            stop_all(daemons.values())
    timings["total_s"] = time.monotonic() - started
    print(f"[kcl takeover] {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return run


def test_every_side_effect_lands_exactly_once_across_the_kill_and_the_reshard(takeover: TakeoverRun) -> None:
    wanted = effects(takeover.records)
    assert set(takeover.sink) == wanted  # nothing lost, nothing extra (poison never reaches the sink)
    assert takeover.victim_effects_before_kill > 0, "the killed worker had done work"
    # Redeliveries the idempotent sink absorbed: only of work the killed worker did but could not record in
    # the shared de-duplication store (it died between a sink write and the batch's done marks).
    retried = {k: i for k, i in takeover.sink.items() if i["attempts"] > 1}
    absorbed = sum(i["attempts"] - 1 for i in retried.values())
    print(f"[kcl takeover] effects={len(wanted)} absorbed_redeliveries={absorbed}")
    assert all(i["worker"] == takeover.victim and takeover.leader in i["workers"] for i in retried.values())


def test_the_survivor_owns_every_lease_and_parents_ended(takeover: TakeoverRun) -> None:
    parents = {s["ShardId"] for s in takeover.shards if "EndingSequenceNumber" in s["SequenceNumberRange"]}
    children = {s["ShardId"] for s in takeover.shards} - parents
    assert len(parents) == 4 and len(children) == 8
    assert {lease["leaseOwner"] for lease in open_leases(takeover.leases)} == {takeover.leader}
    for shard in parents & set(takeover.leases):
        assert takeover.leases[shard]["checkpoint"] == "SHARD_END", shard
    assert children <= set(takeover.leases)


def test_children_are_processed_after_their_parents(takeover: TakeoverRun) -> None:
    at: dict[str, list[float]] = {}
    for item in takeover.sink.values():
        at.setdefault(item["shard"], []).append(item["at"])
    pairs = 0
    for shard in takeover.shards:
        for parent in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")):
            if parent and at.get(parent) and at.get(shard["ShardId"]):
                assert max(at[parent]) < min(at[shard["ShardId"]]), (parent, shard["ShardId"])
                pairs += 1
    assert pairs >= 4


def test_poison_records_are_dead_lettered_with_full_envelopes(takeover: TakeoverRun) -> None:
    poison = {r.poison: r for r in takeover.records if r.poison}
    # The DLQ is at least once: a record read again (a halted batch, a lease taken over) is written again.
    positions = {(r.poison, r.shard, r.position[0]) for r in poison.values()}
    assert {(lt["stage"], lt["shard_id"], int(lt["sequence_number"])) for lt in takeover.letters} == positions
    by_stage = {letter["stage"]: letter for letter in takeover.letters}
    # The aggregate with a bad MD5: the KCL handed it over whole, our deaggregator refused it.
    corrupt, letter = poison["deaggregate"], by_stage["deaggregate"]
    assert (int(letter["sequence_number"]), letter["shard_id"]) == (corrupt.position[0], corrupt.shard)
    assert (
        base64.b64decode(letter["kinesis_data"]) == corrupt.data
        and letter["error_type"] == "DeaggregationError"
    )
    # The tampered revision: V2 fails; the envelope names the user record and carries it.
    tampered, letter = poison["verify"], by_stage["verify"]
    assert (int(letter["sequence_number"]), letter["sub_sequence_number"]) == tampered.position
    assert letter["shard_id"] == tampered.shard and letter["partition_key"] == tampered.partition_key
    assert base64.b64decode(letter["user_record_data"]) == tampered.data
    assert f"rev#{letter['document_id']}#{letter['version']}" == tampered.key
    assert [f["check"] for f in letter["verification_failures"]] == ["V2"]
    assert letter["source"] == f"kcl {tampered.shard}"
    assert abs(letter["approximate_arrival_timestamp"] - time.time()) < 600  # epoch seconds, not local time


# --- run 2: one worker, the sink and then the DLQ unavailable ---------------------------------------------


@dataclass
class OutageRun:
    records: list[UserRecordInfo]
    stuck: UserRecordInfo  # the first record the sink takes
    poison: UserRecordInfo
    sink_down: dict[str, Any]  # what was observed while the sink was down
    dlq_down: dict[str, Any]  # ... while the DLQ was down
    sink: dict[str, dict[str, Any]]
    letters: list[dict[str, Any]]
    final_checkpoint: Position | str
    log: str
    #: After SIGTERM: the launcher's exit status and the daemon's log from then on.
    stop_status: int | None = None
    stop_log: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def outages(
    kinesis_local: LocalServer, moto_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> OutageRun:
    with scenario("outages"):
        return run_outages(kinesis_local, moto_server, tmp_path_factory.mktemp("kcl-outages"))


def run_outages(kinesis_local: LocalServer, moto_server: LocalServer, work_dir: Path) -> OutageRun:
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    sim = simulation(40, seed=5, tampers=("Transactions#20:data.amount",))
    down_file = work_dir / "sink-is-down"
    down_file.touch()
    timings: dict[str, float] = {}
    # Poison records are dead-lettered as soon as they are seen, even while an earlier record in the same
    # batch is stuck. So the deliveries from the one holding the poison on are put only after the DLQ is
    # gone: the worker first meets the poison when the DLQ cannot take it.
    tampered = tampered_keys(sim)
    split = poison_delivery_index(sim, tampered)
    with stream_of(kinesis, 1, "kcl-outages") as stream, tables(dynamodb, moto_server, stream):
        puts = put_to_stream(kinesis, stream, sim.deliveries[:split])
        stuck = next(r for r in user_records(sim, puts, tampered, upto=split) if r.key is not None)
        settings = settings_for(
            stream, kinesis_local, moto_server, work_dir, QLDBSTREAM_HANDLER_SINK__DOWN_FILE=str(down_file)
        )
        table, sink_table = f"{stream}-app", f"{stream}-sink"
        started = time.monotonic()
        daemon = start_worker("worker-1", work_dir, settings)
        try:
            daemon.wait_for_log(r"circuit breaker sink: closed -> open", START_TIMEOUT)
            timings["breaker_open_s"] = time.monotonic() - started
            # The DLQ goes away too (its directory replaced by a file), before the poison record is reached.
            dlq, hidden = work_dir / "dlq", work_dir / "dlq-hidden"
            dlq.rename(hidden)
            dlq.write_text("not a directory")
            puts += put_to_stream(kinesis, stream, sim.deliveries[split:])
            records = user_records(sim, puts, tampered)
            poison = next(r for r in records if r.poison)
            before_poison = records[records.index(poison) - 1]
            time.sleep(3.0)  # a few retries, with the breaker half-open in between
            sink_down = {
                "checkpoint": checkpoint_of(leases(dynamodb, table)["shardId-000000000000"]),
                "sink": read_sink(moto_server.endpoint, sink_table),
                "halts": daemon.log_text().count("halted (sink failed"),
            }
            down_file.unlink()
            recovered = time.monotonic()

            def held_before_poison() -> Position | str | None:
                cp = checkpoint_of(leases(dynamodb, table)["shardId-000000000000"])
                return (
                    cp if cp == before_poison.position and "DLQ write failed" in daemon.log_text() else None
                )

            wait_until(
                "the checkpoint to stop right before the poison record", 60, held_before_poison, [daemon]
            )
            timings["sink_recovered_to_held_at_poison_s"] = time.monotonic() - recovered
            time.sleep(3.0)
            dlq_down = {
                "checkpoint": checkpoint_of(leases(dynamodb, table)["shardId-000000000000"]),
                "sink": read_sink(moto_server.endpoint, sink_table),
            }
            dlq.unlink()
            hidden.rename(dlq)
            restored = time.monotonic()
            last = records[-1].position

            def finished() -> bool:
                cp = checkpoint_of(leases(dynamodb, table)["shardId-000000000000"])
                return cp == last and bool(dead_letters(work_dir))

            wait_until("the checkpoint to reach the last record", 60, finished, [daemon])
            timings["dlq_restored_to_done_s"] = time.monotonic() - restored
            run = OutageRun(
                records,
                stuck,
                poison,
                sink_down,
                dlq_down,
                read_sink(moto_server.endpoint, sink_table),
                dead_letters(work_dir),
                checkpoint_of(leases(dynamodb, table)["shardId-000000000000"]),
                daemon.log_text(),
            )
            logged = len(run.log)
            daemon.stop()  # SIGTERM to `qldbstream kcl`, which forwards it; SIGKILL after 8 s
            run.stop_status = daemon.process.returncode
            run.stop_log = daemon.log_path.read_text(errors="replace")[logged:]
            run.timings = timings
        finally:
            daemon.stop()
            with contextlib.suppress(OSError):
                if (work_dir / "dlq").is_file():
                    (work_dir / "dlq").unlink()
                    shutil.move(str(work_dir / "dlq-hidden"), str(work_dir / "dlq"))
    timings["total_s"] = time.monotonic() - started
    print(f"[kcl outages] {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return run


def test_a_sink_outage_opens_the_breaker_and_no_checkpoint_passes_the_stuck_record(
    outages: OutageRun,
) -> None:
    seen = outages.sink_down
    assert seen["sink"] == {}
    assert seen["halts"] >= 2, "the processor tried the stuck records again"
    cp = seen["checkpoint"]
    assert cp == "TRIM_HORIZON" or cp < outages.stuck.position
    assert "circuit breaker sink: closed -> open" in outages.log


def test_a_dlq_outage_holds_the_checkpoint_right_before_the_poison_record(outages: OutageRun) -> None:
    index = outages.records.index(outages.poison)
    assert outages.dlq_down["checkpoint"] == outages.records[index - 1].position
    assert set(outages.dlq_down["sink"]) == effects(outages.records[:index])  # nothing after the poison


def test_sigterm_lets_the_processor_checkpoint_and_the_worker_exit_0(outages: OutageRun) -> None:
    assert outages.stop_status == 0, outages.stop_log[-3000:]
    assert "qldbstream kcl: SIGTERM; stopping the daemon" in outages.stop_log
    assert '{"action":"status","responseFor":"shutdownRequested"}' in outages.stop_log


def test_after_the_outages_everything_lands_once_and_the_poison_is_dead_lettered(outages: OutageRun) -> None:
    assert set(outages.sink) == effects(outages.records)
    assert outages.final_checkpoint == outages.records[-1].position
    # Each retry of the halted batch verified the poison record again (it lies past the stuck record) and
    # dead-lettered it again while the DLQ was up: the DLQ is at least once. All name the one record.
    positions = {(int(lt["sequence_number"]), lt["sub_sequence_number"]) for lt in outages.letters}
    assert positions == {outages.poison.position}
    letter = outages.letters[-1]
    assert letter["stage"] == "verify" and letter["error_type"] == "PoisonRecordError"
    assert (int(letter["sequence_number"]), letter["sub_sequence_number"]) == outages.poison.position
    assert base64.b64decode(letter["user_record_data"]) == outages.poison.data
    assert f"rev#{letter['document_id']}#{letter['version']}" == outages.poison.key
