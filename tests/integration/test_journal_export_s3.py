"""Journal exports read from S3 (moto server): ``open_export("s3://bucket/prefix")`` and
``qldbstream verify s3://...``, clean and with a listed object deleted. One fresh bucket per test."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from qldbstream_tools.simulate import SimulationConfig, Workload, simulate
from qldbstream_tools.simulate.export import export_files

from qldbstream.cli import main
from qldbstream.io.journal_export import ExportError, open_export
from tests.support.aws import REGION, client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

SIM = simulate(SimulationConfig(seed=4, workload=Workload(transactions=60)))


def upload(s3: Any, fmt: str) -> tuple[str, list[str]]:
    bucket = f"export-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)  # us-east-1: no LocationConstraint
    keys = []
    for key, data in export_files(SIM, output_format=fmt, blocks_per_object=10, bucket=bucket):
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        keys.append(key)
    return bucket, keys


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return client("s3", moto_server.endpoint)


@pytest.mark.parametrize("fmt", ["ION_TEXT", "ION_BINARY", "JSON"])
def test_verify_an_export_in_s3(s3_env: Any, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    bucket, _ = upload(s3_env, fmt)
    exp = open_export(f"s3://{bucket}/journalExport", s3_client=s3_env)
    assert exp.output_format == fmt and exp.strand_ids == [SIM.journal.strand_id]
    assert [b.sequence_no for b in exp.blocks()] == [b.sequence_no for b in SIM.journal.blocks]
    code = main(["verify", "--json", "--no-progress", f"s3://{bucket}/journalExport"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["errors"][:3] or report["failures"][:3]
    assert report["checks"]["V8"]["passed"] == len(SIM.journal.blocks)
    assert report["checks"]["V9"]["passed"] == len(SIM.journal.blocks) - 1


def test_a_deleted_object_in_s3_is_named(s3_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bucket, keys = upload(s3_env, "ION_BINARY")
    gone = keys[2]  # keys[0] is the started manifest: this is the second data object
    s3_env.delete_object(Bucket=bucket, Key=gone)
    code = main(["verify", "--json", "--no-progress", f"s3://{bucket}/journalExport"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [e["type"] for e in report["errors"]] == ["ExportProblem/missing-object"]
    assert gone in report["errors"][0]["message"]
    assert report["gaps"][0]["fromSequenceNo"] == 11 and report["gaps"][0]["toSequenceNo"] == 20
    with pytest.raises(ExportError):
        list(open_export(f"s3://{bucket}/journalExport", s3_client=s3_env).blocks())


def test_no_export_under_the_prefix(s3_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bucket, _ = upload(s3_env, "ION_TEXT")
    assert main(["verify", "--no-progress", f"s3://{bucket}/elsewhere"]) == 2
    assert "no journal export here" in capsys.readouterr().err
