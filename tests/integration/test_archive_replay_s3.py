"""Replaying a journal export straight from S3 (moto server): ``qldbstream run --source export:s3://...``
and :class:`~qldbstream.runtimes.archive.ArchiveReplay` over it, every ledger revision once."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from qldbstream_tools.simulate import SimulationConfig, Workload, simulate
from qldbstream_tools.simulate.export import export_files

from qldbstream.cli import main
from qldbstream.io.archive_sources import ExportArchive
from qldbstream.io.checkpoint_file import FileCheckpointStore
from tests.functional.test_archive_replay import Sink, expected, replay
from tests.support.aws import REGION, client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

SIM = simulate(SimulationConfig(seed=5, workload=Workload(transactions=50)))


@pytest.fixture
def bucket(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    s3 = client("s3", moto_server.endpoint)
    name = f"replay-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for key, data in export_files(SIM, output_format="ION_BINARY", blocks_per_object=8, bucket=name):
        s3.put_object(Bucket=name, Key=key, Body=data)
    return s3, name


def test_an_export_in_s3_replays_every_revision_once(bucket: tuple[Any, str], tmp_path: Path) -> None:
    s3, name = bucket
    source = ExportArchive(f"s3://{name}/journalExport", s3_client=s3)
    sink = Sink()

    report = replay(source, sink, FileCheckpointStore(tmp_path / "cp.json")).run()

    assert report.reason == "finished"
    assert set(sink.effects) == expected(SIM) and set(sink.effects.values()) == {1}


def test_run_source_export_s3_end_to_end(
    bucket: tuple[Any, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", "")
    _, name = bucket
    argv = [
        "run",
        "--source",
        f"export:s3://{name}/journalExport",
        "--checkpoint-file",
        str(tmp_path / "cp.json"),
    ]

    assert main([*argv, "--no-progress"]) == 0
    records = len(SIM.journal.blocks) + len(SIM.ledger.revisions)
    assert f"finished; {records} records read, 1 of 1 shards finished" in capsys.readouterr().err
    assert main([*argv, "--no-progress"]) == 0
    assert "finished; 0 records read, 1 of 1 shards finished" in capsys.readouterr().err
