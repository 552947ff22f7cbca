"""The messy-delivery matrix in the runtimes (issue 11, deliverable 7), on real servers on 127.0.0.1.

Streams come from the independent forge (:mod:`tests.support.forge`, every rung of the cover-up
ladder in one stream) and what the handler received is judged against its ground truth only
(:mod:`tests.support.delivery_matrix`). Each cell prints one line (``-s``).

* **Lambda** - an event-source-mapping emulator (:func:`~tests.support.delivery_matrix.run_lambda`):
  4 unaggregated shards, 30 % duplicates, reordering, per shard one invocation in flight, shards
  invoked concurrently from threads or interleaved from one thread, the cursor moved to the reported
  ``itemIdentifier``; each shard in its own container (its own ``App``), sharing the DynamoDB gate
  and de-duplication tables on moto server; one cell kills a container mid-batch twice.
* **The standalone worker** - the forge's records put into a real 4-shard kinesis-local stream
  (``PutRecords`` with explicit hash keys, so each record lands on the forge's shard in the forge's
  order), ``qldbstream run --until-caught-up`` as a subprocess with a recording plugin: one run, and
  one SIGKILLed mid-way and run again to the end (the records are put in four parts 1.2 s apart so
  that the journal order releases blocks while the worker reads). Checkpoints and de-duplication
  marks in DynamoDB (moto: a worker that is to survive a restart keeps its marks there); the gate
  store and the order are the defaults (memory, journal); batches of 2-8 records.
* **The KCL** - two ``qldbstream kcl`` workers (the real MultiLangDaemon) over a 4-shard stream, the
  gate and de-duplication stores in DynamoDB; a third of the records is put before they start, the
  rest once both read their shards; the worker that is not the KCL leader is SIGKILLed (JVM and
  record processors) once it has delivered one of the later records, the survivor takes over. A
  run is a worker here: duplicates between the two workers are allowed, within one they are not.

Every test is bounded (each wait has a timeout) and stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.gate_dynamodb import DynamoDBGateStore
from qldbstream.io.kinesis_writer import PutEntry, create_stream, put_records
from tests.support.aws import REGION, client
from tests.support.delivery_matrix import (
    CellResult,
    assert_cell,
    count_parked,
    evaluate,
    read_seen,
    run_lambda,
)
from tests.support.forge import RUNGS, Delivery, forge_stream
from tests.support.kcl import FAST_TEST_PROPERTIES, JVM_OPTIONS, KclDaemon, jar_dir, stop_all
from tests.support.servers import REPO_ROOT, LocalServer, MotoServer

pytestmark = pytest.mark.integration

TRANSACTIONS = 40
RECORDER = "tests.support.delivery_matrix:file_recorder"


def ladder(seed: int, shards: int = 4, *, aggregated: bool = False, duplicates: float = 0.3) -> Delivery:
    return forge_stream(
        seed,
        transactions=TRANSACTIONS,
        rungs=RUNGS,
        shards=shards,
        aggregated=aggregated,
        duplicates=duplicates,
        reorder=3,
    )


# --- Lambda ---------------------------------------------------------------------------------------


LAMBDA_CELLS = [
    pytest.param("verified", True, (), id="s4-plain-dup30-reorder3-concurrent-verified"),
    pytest.param("chain-confirmed", True, (), id="s4-plain-dup30-reorder3-concurrent-chain-confirmed"),
    pytest.param("verified", False, (), id="s4-plain-dup30-reorder3-interleaved-verified"),
    pytest.param("chain-confirmed", False, (), id="s4-plain-dup30-reorder3-interleaved-chain-confirmed"),
    pytest.param(
        "verified", True, (0.3, 0.6), id="s4-plain-dup30-reorder3-concurrent-verified-2-container-kills"
    ),
]


@pytest.mark.parametrize(("mode", "concurrent", "crashes"), LAMBDA_CELLS)
def test_lambda_event_source_mapping(
    moto_server: MotoServer, mode: str, concurrent: bool, crashes: tuple[float, ...]
) -> None:
    seed = 500 + len(crashes) * 10 + concurrent
    d = ladder(seed)
    how = "concurrent" if concurrent else "interleaved"
    kills = f", {len(crashes)} container kills" if crashes else ""
    result = run_lambda(
        d,
        cell=f"lambda s4-plain-dup30-reorder3 ladder {how}{kills} seed={seed}",
        dynamodb_endpoint=moto_server.endpoint,
        client=client,
        mode=mode,
        seed=seed,
        batch_size=10,
        concurrent=concurrent,
        crashes=crashes,
        time_limit=90.0,
    )
    # every guarantee, concurrent containers included (claims in the shared de-duplication store)
    assert_cell(result)
    if not crashes:
        assert result.duplicates == 0


# --- shared helpers for the subprocess runtimes -----------------------------------------------------


@contextlib.contextmanager
def forge_stream_on(kinesis: Any, d: Delivery, prefix: str) -> Iterator[tuple[str, list[str]]]:
    """A kinesis-local stream with as many shards as the forge's; yields its name and, per forge
    shard, the explicit hash key that lands a record on the same shard."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    create_stream(kinesis, name, len(d.shards))
    try:
        shards = sorted(
            kinesis.list_shards(StreamName=name)["Shards"],
            key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]),
        )
        assert len(shards) == len(d.shards)
        yield name, [s["HashKeyRange"]["StartingHashKey"] for s in shards]
    finally:
        with contextlib.suppress(ClientError):
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def put_forge(
    kinesis: Any, name: str, d: Delivery, keys: list[str], start: float = 0.0, end: float = 1.0
) -> None:
    """Put the part ``[start, end)`` (fractions) of each forge shard's records, in the forge's order."""
    for shard, key in zip(d.shards, keys, strict=True):
        n = len(shard.records)
        part = shard.records[round(n * start) : round(n * end)]
        if part:
            results = put_records(kinesis, name, [PutEntry(r.data, r.partition_key, key) for r in part])
            assert len({r.shard_id for r in results}) == 1


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLDBSTREAM_", "JAVA_TOOL"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(REPO_ROOT),
        **settings,
    }
    return env


def count_revisions(path: Path) -> int:
    return len(read_seen(path)[0])


def wait_for(
    what: str, timeout: float, probe: Any, *, alive: Any = lambda: True, tail: Any = lambda: ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if not alive():
            pytest.fail(f"stopped while waiting for {what}\n{tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tail()}")
        time.sleep(0.1)


# --- the standalone worker ----------------------------------------------------------------------------


def start_run(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "qldbstream", "run", "--until-caught-up", "--create-table"]
    command += ["--poll-interval", "0.05", "--no-progress"]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.parametrize("kill", [False, True], ids=["one-run", "sigkill-and-run-again"])
def test_standalone_worker(
    kinesis_local: LocalServer, moto_server: MotoServer, tmp_path: Path, kill: bool
) -> None:
    seed = 600
    d = ladder(seed)
    truth = d.journal.truth
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    effects, log = tmp_path / "effects.jsonl", tmp_path / "run.log"
    suffix = uuid.uuid4().hex[:10]
    checkpoints, dedupe = f"matrix-cp-{suffix}", f"matrix-dedupe-{suffix}"
    DynamoDBDedupeStore.create_table(dynamodb, dedupe)
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with forge_stream_on(kinesis, d, "matrix-worker") as (stream, keys):
            # four parts 1.2 s apart: arrival times spread beyond the journal order's skew (1 s), so
            # that the worker releases blocks as it reads instead of all at once at the tip
            for part in range(4):
                if part:
                    time.sleep(1.2)
                put_forge(kinesis, stream, d, keys, part / 4, (part + 1) / 4)
            env = clean_env(
                QLDBSTREAM_STREAM_NAME=stream,
                QLDBSTREAM_KINESIS_ENDPOINT_URL=kinesis_local.endpoint,
                QLDBSTREAM_DYNAMODB_ENDPOINT_URL=moto_server.endpoint,
                QLDBSTREAM_CHECKPOINT_TABLE=checkpoints,
                QLDBSTREAM_DEDUPE_STORE=f"dynamodb:{dedupe}",
                QLDBSTREAM_DLQ=f"dir:{tmp_path / 'dlq'}",
                QLDBSTREAM_HANDLERS=RECORDER,
                QLDBSTREAM_HANDLER_FILE_RECORDER__PATH=str(effects),
                QLDBSTREAM_HANDLER_FILE_RECORDER__WORKER="run",
                QLDBSTREAM_BATCH_MIN="2",
                QLDBSTREAM_BATCH_MAX="8",
                QLDBSTREAM_LOG_FORMAT="text",
                QLDBSTREAM_LOG_LEVEL="WARNING",
            )
            expected = len(truth.deliverable("verified"))
            what = "one run"
            if kill:
                # the first run is slowed down (the recorder waits 50 ms per call) to be killed mid-way
                first = start_run({**env, "QLDBSTREAM_HANDLER_FILE_RECORDER__DELAY": "0.05"}, log)
                processes.append(first)
                wait_for(
                    "the first run to deliver 40 % of the revisions",
                    60,
                    lambda: count_revisions(effects) >= expected * 0.4,
                    alive=lambda: first.poll() is None,
                    tail=lambda: log.read_text(errors="replace")[-3000:],
                )
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                what = f"SIGKILL after {count_revisions(effects)} revisions, run again"
            last = start_run(env, log)
            processes.append(last)
            try:
                status = last.wait(timeout=max(5.0, 100 - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"`qldbstream run --until-caught-up` did not return\n{log.read_text()[-3000:]}")
            letters = sorted((tmp_path / "dlq").glob("*.json")) if (tmp_path / "dlq").is_dir() else []
            seen, _ = read_seen(effects)
            result = evaluate(
                f"worker s4-plain-dup30-reorder3 ladder {what} seed={seed}",
                truth,
                "verified",
                seen,
                letters=_letters(letters),
                restarts=int(kill),
                elapsed=time.monotonic() - started,
                notes=f"exit {status}",
            )
            assert status == 0, log.read_text(errors="replace")[-3000:]
            assert_cell(result)
            if not kill:
                assert result.duplicates == 0
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for table in (checkpoints, dedupe):
            with contextlib.suppress(ClientError):
                dynamodb.delete_table(TableName=table)


def _letters(paths: list[Path]) -> list[Any]:
    from qldbstream.pipeline.dlq import DeadLetter

    return [DeadLetter.from_json(p.read_text()) for p in paths]


# --- the KCL -----------------------------------------------------------------------------------------


#: the record processor: short retry budgets and backoffs so that recoveries show within seconds
PROCESSOR = f"{sys.executable} -m qldbstream.kcl --call-budget 2 --halt-backoff 0.5 --halt-backoff-cap 2"


def start_kcl_worker(name: str, work_dir: Path, env: dict[str, str]) -> KclDaemon:
    """``qldbstream kcl`` (the launcher runs the JVM in its process group) as one worker."""
    properties = work_dir / f"{name}.properties"
    command = [sys.executable, "-m", "qldbstream.cli.kcl", "--worker-id", name]
    command += ["--properties-file", str(properties), *(f"--jvm-option={o}" for o in JVM_OPTIONS)]
    for key, value in {**FAST_TEST_PROPERTIES, "executableName": PROCESSOR}.items():
        command += ["--set", f"{key}={value}"]
    log_path = work_dir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=work_dir,
        env={**env, "QLDBSTREAM_HANDLER_FILE_RECORDER__WORKER": name},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # launcher, JVM and record processors share this group: kill() reaches all
    )
    return KclDaemon(name, process, properties, log_path, time.monotonic(), log)


def lease_table(dynamodb: Any, table: str) -> dict[str, dict[str, str]]:
    """leaseKey -> {attribute: value} of the KCL's lease table (empty while it does not exist)."""
    try:
        items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    except ClientError:
        return {}
    return {i["leaseKey"]["S"]: {k: str(next(iter(v.values()))) for k, v in i.items()} for i in items}


@pytest.mark.slow
def test_two_kcl_workers_one_killed(
    kinesis_local: LocalServer, moto_server: MotoServer, tmp_path: Path
) -> None:
    """Two workers; a third of each shard's records is put before they start, the rest once both
    read their shards; the non-leader is SIGKILLed once it has delivered one of the later records
    (its leader lock would outlive the test), and the survivor must deliver everything."""
    jar_dir()  # the daemon's jars must be installed (make kcl)
    seed = 700
    d = ladder(seed)
    truth = d.journal.truth
    kinesis = client("kinesis", kinesis_local.endpoint)
    dynamodb = client("dynamodb", moto_server.endpoint)
    effects = tmp_path / "effects.jsonl"
    suffix = uuid.uuid4().hex[:10]
    gate, dedupe = f"matrix-kcl-gate-{suffix}", f"matrix-kcl-dedupe-{suffix}"
    DynamoDBGateStore.create_table(dynamodb, gate)
    DynamoDBDedupeStore.create_table(dynamodb, dedupe)
    expected = {f.key for f in truth.deliverable("verified")} - {f.key for f in truth.doubtful("verified")}
    started = time.monotonic()
    daemons: dict[str, KclDaemon] = {}
    app = ""

    def left() -> float:
        return max(5.0, 115 - (time.monotonic() - started))

    try:
        with forge_stream_on(kinesis, d, "matrix-kcl") as (stream, keys):
            app = f"{stream}-app"
            put_forge(kinesis, stream, d, keys, 0.0, 1 / 3)
            env = clean_env(
                QLDBSTREAM_STREAM_NAME=stream,
                QLDBSTREAM_REGION=REGION,
                QLDBSTREAM_APPLICATION_NAME=app,
                QLDBSTREAM_KINESIS_ENDPOINT_URL=kinesis_local.endpoint,
                QLDBSTREAM_DYNAMODB_ENDPOINT_URL=moto_server.endpoint,
                QLDBSTREAM_DLQ=f"dir:{tmp_path / 'dlq'}",
                QLDBSTREAM_DEDUPE_STORE=f"dynamodb:{dedupe}",
                QLDBSTREAM_GATE_STORE=f"dynamodb:{gate}",
                QLDBSTREAM_HANDLERS=RECORDER,
                QLDBSTREAM_HANDLER_FILE_RECORDER__PATH=str(effects),
                QLDBSTREAM_LOG_FORMAT="text",
                QLDBSTREAM_LOG_LEVEL="INFO",  # "shard ...: processing from" tells a processor started
            )
            for name in ("worker-a", "worker-b"):
                daemons[name] = start_kcl_worker(name, tmp_path, env)

            def alive() -> bool:
                return all(dm.alive() or dm.stopped for dm in daemons.values())

            def tails() -> str:
                return "\n".join(f"--- {n}\n{dm.log_tail(25)}" for n, dm in daemons.items())

            def both_reading() -> bool:
                owners: dict[str, list[str]] = {}
                for shard, lease in lease_table(dynamodb, app).items():
                    owners.setdefault(lease.get("leaseOwner", ""), []).append(shard)
                return set(owners) == set(daemons) and all(
                    f"shard {shard}: processing from" in daemons[w].log_text()
                    for w, shards in owners.items()
                    for shard in shards
                )

            wait_for("both workers to read their shards", left(), both_reading, alive=alive, tail=tails)
            leader = wait_for(
                "a KCL leader",
                left(),
                lambda: next((n for n, dm in daemons.items() if dm.is_leader()), None),
                alive=alive,
                tail=tails,
            )
            victim = next(n for n in daemons if n != leader)
            before = {s.key for s in read_seen(effects)[0]}
            put_forge(kinesis, stream, d, keys, 1 / 3, 1.0)
            wait_for(
                f"{victim} to deliver one of the later records",
                left(),
                lambda: any(
                    s.run == victim and s.key not in before for s in read_seen(effects, run_by_worker=True)[0]
                ),
                alive=alive,
                tail=tails,
            )
            daemons[victim].kill()  # SIGKILL: launcher, JVM and record processors, as a crashed host
            killed_at = time.monotonic()
            wait_for(
                "every expected revision",
                left(),
                lambda: expected <= {s.key for s in read_seen(effects)[0]},
                alive=daemons[leader].alive,
                tail=tails,
            )
            time.sleep(2.0)  # anything still in flight shows now
            seen, _ = read_seen(effects, run_by_worker=True)
            letters = sorted((tmp_path / "dlq").glob("*.json")) if (tmp_path / "dlq").is_dir() else []
            result: CellResult = evaluate(
                f"kcl s4-plain-dup30-reorder3 ladder 2 workers, {victim} SIGKILLed seed={seed}",
                truth,
                "verified",
                seen,
                letters=_letters(letters),
                restarts=1,
                elapsed=time.monotonic() - started,
                notes=f"the survivor finished {time.monotonic() - killed_at:.1f} s after the kill, "
                f"left parked {count_parked(dynamodb, gate)}",
            )
            assert_cell(result)  # one record processor per shard, claims in the shared store
    finally:
        stop_all(daemons.values())
        tables = [gate, dedupe] + (
            [app, f"{app}-WorkerMetricStats", f"{app}-CoordinatorState"] if app else []
        )
        for table in tables:
            with contextlib.suppress(ClientError):
                dynamodb.delete_table(TableName=table)
