"""``qldbstream dr-check`` on kinesis-local: a target stream with planted differences (a missing
revision, an extra one, one with other bytes, two versions swapped, a harmless duplicate), a
clean copy, a copy split over two "regions" (``--union``) and a stream that does not exist."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from qldbstream_tools.simulate import Simulation

from qldbstream.cli import main
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.io.kinesis_writer import PutEntry, create_stream, put_records
from tests.support.aws import REGION, client
from tests.support.servers import LocalServer
from tests.support.streams import simulation

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def cli_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def streams(kinesis_local: LocalServer) -> Iterator[tuple[Any, list[str]]]:
    """Five one-shard streams, created together (kinesis-local takes ~0.8 s to create one)."""
    kinesis = client("kinesis", kinesis_local.endpoint)
    names = [f"dr-{uuid.uuid4().hex[:10]}" for _ in range(5)]
    for name in names:
        kinesis.create_stream(StreamName=name, ShardCount=1)
    for name in names:
        create_stream(kinesis, name, 1, exist_ok=True)
    yield kinesis, names
    for name in names:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def revisions(sim: Simulation) -> list[RevisionDetails]:
    out = []
    for rec in sim.records:
        if rec.record_type == "REVISION_DETAILS":
            from qldbstream.core.records import KinesisRecord

            record = decode(deaggregate(KinesisRecord(rec.data, "1", "pk"))[0])
            assert isinstance(record, RevisionDetails)
            out.append(record)
    return out


def put(kinesis: Any, name: str, records: list[RevisionDetails]) -> None:
    for i in range(0, len(records), 100):  # one call per 100: keep each document's order
        put_records(kinesis, name, [PutEntry(r.raw, r.document_id) for r in records[i : i + 100]])


def dr_check(capsys: pytest.CaptureFixture[str], endpoint: str, *args: str) -> tuple[int, Any]:
    code = main(
        ["dr-check", "--endpoint-url", endpoint, "--region", REGION, "--poll-interval", "0.05", *args]
    )
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in args else out


def test_dr_check_reports_every_planted_difference(
    kinesis_local: LocalServer, streams: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    kinesis, (source, planted, clean, west, east) = streams
    sim = simulation(25, seed=61)
    put_records(kinesis, source, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
    original = revisions(sim)
    tampered = {
        (r.document_id, r.version): r
        for r in revisions(simulation(25, seed=61, tampers=("Transactions#1:data.amount",)))
    }
    stranger = revisions(simulation(5, seed=99))[0]

    by_doc: dict[str, list[RevisionDetails]] = {}
    for r in original:
        by_doc.setdefault(r.document_id, []).append(r)
    swapped = next(doc for doc, versions in by_doc.items() if len(versions) >= 2)
    changed = next(
        k
        for k, r in tampered.items()
        if r.raw != next(o.raw for o in original if (o.document_id, o.version) == k)
    )
    dropped = next(r for r in original if r.document_id not in (swapped, changed[0]))
    copy: list[RevisionDetails] = []
    for r in original:
        if r is dropped:
            continue
        copy.append(tampered[changed] if (r.document_id, r.version) == changed else r)
    first, second = (copy.index(v) for v in by_doc[swapped][:2])
    copy[first], copy[second] = copy[second], copy[first]
    copy += [stranger, copy[0]]  # an extra revision, and a duplicate
    put(kinesis, planted, copy)

    code, report = dr_check(capsys, kinesis_local.endpoint, "--source", source, "--target", planted, "--json")
    assert code == 1 and not report["ok"]
    (target,) = report["targets"]
    counts = target["counts"]
    assert (counts["missing"], counts["extra"], counts["mismatched"], counts["outOfOrder"]) == (1, 1, 1, 1)
    assert target["missing"][0]["documentId"] == dropped.document_id
    assert target["extra"][0]["documentId"] == stranger.document_id
    assert (target["mismatched"][0]["documentId"], target["mismatched"][0]["version"]) == changed
    assert target["outOfOrder"][0] == {
        "documentId": swapped,
        "version": by_doc[swapped][0].version,
        "after": by_doc[swapped][1].version,
        "shard": "shardId-000000000000",
    }
    assert target["duplicates"] == 1 and target["matched"] == len(original) - 2
    assert {f["check"] for f in target["verificationFailures"]} == {"V2"}  # the other bytes do not verify
    assert report["source"]["selected"] == len(original)

    # text output names the differences too
    code, text = dr_check(capsys, kinesis_local.endpoint, "--source", source, "--target", planted)
    assert code == 1 and "DIFFERS" in text and f"document {dropped.document_id} v{dropped.version}" in text

    # a faithful copy; and the same copy split over two regions, which only --union accepts
    put(kinesis, clean, original)
    half = len(original) // 2
    put(kinesis, west, original[:half])
    put(kinesis, east, original[half:])
    code, report = dr_check(capsys, kinesis_local.endpoint, "--source", source, "--target", clean, "--json")
    assert code == 0 and report["targets"][0]["matched"] == len(original)
    code, report = dr_check(
        capsys, kinesis_local.endpoint, "--source", source, "--target", west, "--target", east, "--json"
    )
    assert code == 1 and [t["counts"]["missing"] for t in report["targets"]] == [len(original) - half, half]
    code, report = dr_check(
        capsys,
        kinesis_local.endpoint,
        "--source",
        source,
        "--target",
        west,
        "--target",
        east,
        "--union",
        "--json",
    )
    assert code == 0 and report["targets"][0]["matched"] == len(original)
    code, report = dr_check(
        capsys, kinesis_local.endpoint, "--source", source, "--target", clean, "--sample", "0.5", "--json"
    )
    assert code == 0 and 0 < report["source"]["selected"] < len(original)


def test_dr_check_input_errors_exit_with_2(
    kinesis_local: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "dr-check",
            "--endpoint-url",
            kinesis_local.endpoint,
            "--region",
            REGION,
            "--source",
            "nope",
            "--target",
            "nope2",
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert main(["dr-check", "--source", "a", "--target", "b", "--sample", "0"]) == 2
    assert main(["dr-check", "--source", "a", "--target", "b", "--records", "journal"]) == 2
