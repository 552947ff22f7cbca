"""``qldbstream export`` end to end against moto server (Kinesis and S3): a simulated ledger put into
a stream, exported to S3 or a directory, read back and compared with the ledger; killed mid-way and
run again; bad options and missing streams as one clear line."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from qldbstream_handlers.export import (
    DestinationCheckpointStore,
    ErrorPrefixDeadLetterQueue,
    ExportHandler,
    ExportOptions,
    LocalStorage,
    S3Storage,
)
from qldbstream_tools.simulate import Simulation

import qldbstream.cli.command as cli
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.dedupe import LatePolicy
from qldbstream.io.kinesis_writer import PutEntry, put_records
from qldbstream.runtimes.worker import Worker, WorkerOptions
from tests.handlers.test_export import Crash, CrashingStorage, check_rows, read
from tests.support.aws import REGION, client, kinesis_stream
from tests.support.servers import MotoServer
from tests.support.streams import simulation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulation(60, seed=12, shards=2, duplicates=0.1, deletes=3, redactions=2)


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("QLDBSTREAM_STREAM_NAME", "QLDBSTREAM_CONFIG", "QLDBSTREAM_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return moto_server.endpoint


@pytest.fixture
def stream(aws_env: str, sim: Simulation) -> Iterator[str]:
    kinesis = client("kinesis", aws_env)
    with kinesis_stream(kinesis, 2, prefix="export") as name:
        put_records(kinesis, name, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
        yield name


def export(endpoint: str, stream: str, to: str, *extra: str) -> int:
    argv = ["export", "--stream", stream, "--endpoint-url", endpoint, "--to", to, "--no-progress"]
    return cli.main([*argv, "--poll-interval", "0.05", *extra])


def test_export_to_s3_equals_the_ledger_and_a_second_run_adds_nothing(
    aws_env: str, stream: str, sim: Simulation, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = client("s3", aws_env)
    bucket = f"export-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    to = f"s3://{bucket}/qldb-export"
    window = ("--from", "2024-03-01T00:00:00Z", "--until", "2025-01-01T00:00:00Z")
    assert export(aws_env, stream, to, *window, "--compression", "gzip") == 0
    assert "revisions in" in capsys.readouterr().err
    storage = S3Storage(s3, bucket, "qldb-export")
    keys = [k for k in storage.list() if k.endswith(".parquet")]
    assert keys and all(k.startswith("year=2024/shardId-") for k in keys)
    rows = [
        {**row, "year": 2024}
        for k in keys
        for row in pq.read_table(io.BytesIO(storage.get(k) or b"")).to_pylist()
    ]
    check_rows(rows, sim.ledger.revisions)
    assert (
        pq.ParquetFile(io.BytesIO(storage.get(keys[0]) or b"")).metadata.row_group(0).column(0).compression
        == "GZIP"
    )
    # The same command again: the checkpoints in the destination say everything is done.
    assert export(aws_env, stream, to, *window, "--compression", "gzip") == 0
    assert "0 revisions in 0 files" in capsys.readouterr().err
    assert sorted(k for k in storage.list() if k.endswith(".parquet")) == sorted(keys)


def test_killed_worker_then_the_cli_resumes_without_duplicate_rows(
    aws_env: str, stream: str, sim: Simulation, tmp_path: Path
) -> None:
    kinesis = client("kinesis", aws_env)
    ops = [0]
    storage = CrashingStorage(LocalStorage(tmp_path), ops, 9)
    handler = ExportHandler(
        storage=storage,
        errors=CrashingStorage(LocalStorage(tmp_path / "_errors"), ops, 9),
        options=ExportOptions(),
    )
    app = App(
        Settings(late_policy=LatePolicy.DELIVER_LATE),
        handlers=[handler],
        dlq=ErrorPrefixDeadLetterQueue(storage),
    )
    worker = Worker(
        kinesis,
        stream,
        app.pipeline(),
        DestinationCheckpointStore(LocalStorage(tmp_path)),
        [handler],
        WorkerOptions(
            stop_at_completed=True, poll_interval=0.05, batch_min=3, batch_max=4, halt_backoff=0.05
        ),
    )
    with pytest.raises(Crash):
        worker.run(until_caught_up=True)  # killed on its 9th write, mid-flush
    saved = DestinationCheckpointStore(LocalStorage(tmp_path)).all(stream)
    assert saved and not all(cp.shard_ended for cp in saved.values())
    assert export(aws_env, stream, str(tmp_path)) == 0  # the CLI picks up the same checkpoints
    check_rows(read(tmp_path), sim.ledger.revisions)


def test_errors_are_one_clear_line(
    aws_env: str, stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(*argv: str) -> tuple[int, str]:
        code = export(aws_env, *argv)
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return code, err

    code, err = fails(stream, str(tmp_path), "--from", "yesterday")
    assert code == 2 and "--from 'yesterday' is not an ISO 8601 timestamp" in err
    code, err = fails(
        stream, str(tmp_path), "--from", "2024-02-01T00:00:00Z", "--until", "2024-01-01T00:00:00Z"
    )
    assert code == 2 and "must be after" in err
    code, err = fails(stream, str(tmp_path), "--partition", "year=YYYY")
    assert code == 2 and "partition 'year=YYYY'" in err
    code, err = fails(stream, str(tmp_path), "--format", "jsonl", "--compression", "zstd")
    assert code == 2 and "compression 'zstd' for jsonl" in err
    code, err = fails("no-such-stream", str(tmp_path / "other"))
    assert code == 2 and "no-such-stream" in err
    code, err = fails(stream, f"s3://missing-bucket-{uuid.uuid4().hex[:6]}/x")
    assert code == 1 and "NoSuchBucket" in err
    assert export(aws_env, stream, str(tmp_path), "--partition", "year=YYYY/month=MM/") == 0
    capsys.readouterr()
    code, err = fails(stream, str(tmp_path), "--partition", "year=YYYY/")
    assert code == 2 and "holds an export with other partition" in err
