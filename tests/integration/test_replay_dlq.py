"""``qldbstream replay-dlq`` end to end: an app built from a configuration file, handlers loaded as
plugins, de-duplication in DynamoDB (moto server), DLQs on disk and in SQS, and Lambda on-failure
records re-read from kinesis-local (the tests marked ``integration``). The last tests need no
server: the replay loop on a directory DLQ, on-failure record parsing, and reading a range from a
fake Kinesis.

The two handler plugins live in this module (``picky`` fails on the revisions in ``BROKEN``,
``audit`` takes everything); ``EFFECTS`` counts each handler's side effects per revision.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from qldbstream_tools.simulate import Simulation

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.app.assembly import App
from qldbstream.app.config import load_settings
from qldbstream.cli import replay_dlq
from qldbstream.core.aggregate import MAX_RECORD_BYTES, aggregate
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import JournalRecord, RevisionDetails, decode
from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.dlq import SQS_MAX_BYTES, DirectoryDeadLetterQueue
from qldbstream.io.kinesis_writer import PutEntry, put_records
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.dlq import DeadLetter, DeadLetterQueue
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from qldbstream.runtimes.lambda_failures import LambdaFailure, parse_lambda_failures, read_range
from qldbstream.runtimes.replay import Replayer, replay_dead_letters
from tests.support.aws import client, kinesis_stream
from tests.support.servers import LocalServer, MotoServer
from tests.support.streams import kinesis_records, simulation

EFFECTS: Counter[tuple[str, str, int]] = Counter()
BROKEN: set[tuple[str, int]] = set()


class Recorder(Handler):
    def __init__(self, name: str) -> None:
        self.name = name

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for i, r in enumerate(records):
            assert isinstance(r, RevisionDetails)
            if self.name == "picky" and (r.document_id, r.version) in BROKEN:
                raise BatchItemError(i, ValueError(f"cannot take {r.document_id} v{r.version}"))
            EFFECTS[(self.name, r.document_id, r.version)] += 1


def picky() -> Handler:
    return Recorder("picky")


def audit() -> Handler:
    return Recorder("audit")


HANDLERS = [f"{__name__}:picky", f"{__name__}:audit"]
#: Small streams: every revision costs a few DynamoDB calls per handler.
TRANSACTIONS = 12


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    EFFECTS.clear()
    BROKEN.clear()
    for key in [k for k in __import__("os").environ if k.startswith("QLDBSTREAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield
    EFFECTS.clear()
    BROKEN.clear()


@pytest.fixture
def config(tmp_path: Path, moto_server: MotoServer) -> Iterator[Any]:
    """Write a configuration file; returns a function taking overrides; the DLQ is a directory."""
    table = f"dedupe-{uuid.uuid4().hex[:12]}"
    DynamoDBDedupeStore.create_table(client("dynamodb", moto_server.endpoint), table)

    def write(**overrides: Any) -> str:
        values: dict[str, Any] = {
            "handlers": HANDLERS,
            "region": "us-east-1",
            "endpoint_url": moto_server.endpoint,
            "dedupe_store": f"dynamodb:{table}",
            "dlq": f"dir:{tmp_path / 'dlq'}",
            "retry_max_attempts": 1,  # dead-letter at the first failure: no real sleeps anywhere
            **overrides,
        }
        path = tmp_path / f"qldbstream-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(values), encoding="utf-8")
        return str(path)

    yield write


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``qldbstream replay-dlq ARGV`` in this process; return (exit status, standard output)."""
    parser = argparse.ArgumentParser(prog="qldbstream")
    replay_dlq.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["replay-dlq", *argv])
    capsys.readouterr()
    status = int(args.handler(args))
    return status, capsys.readouterr().out


def run_pipeline(config_file: str, sim: Simulation) -> None:
    """The normal run that dead-letters what ``picky`` cannot take (and what fails verification)."""
    app = App.from_env(config_file=config_file)
    try:
        pipeline = app.pipeline(sleep=lambda seconds: None)
        for shard, records in kinesis_records(sim).items():
            result = pipeline.process(shard, records)
            assert not result.halted and result.first_unfinished is None
    finally:
        app.close()


def single_revision_transactions(sim: Simulation, n: int) -> list[tuple[str, int]]:
    """``n`` revisions that are the only revision of their document (no late-revision effects)
    and that pass verification (they reach the handlers)."""
    versions = Counter(r.document_id for r in sim.ledger.revisions)
    tampered = {(f.document_id, f.version) for f in sim.expected.failures}
    picks = [
        (r.document_id, r.version)
        for r in sim.ledger.revisions
        if versions[r.document_id] == 1 and (r.document_id, r.version) not in tampered
    ]
    assert len(picks) >= n
    return picks[:n]


def revisions(sim: Simulation) -> set[tuple[str, int]]:
    return {(r.document_id, r.version) for r in sim.ledger.revisions}


def effects(handler: str) -> Counter[tuple[str, int]]:
    return Counter({(doc, v): n for (h, doc, v), n in EFFECTS.items() if h == handler})


def dlq_files(tmp_path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((tmp_path / "dlq").glob("*.json"))}


# --- DLQ entries -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_fixed_handler_replays_its_entries_deletes_them_and_a_second_replay_finds_nothing(
    config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(TRANSACTIONS)
    cfg = config()
    BROKEN.update(single_revision_transactions(sim, 2))
    run_pipeline(cfg, sim)
    assert len(dlq_files(tmp_path)) == 2
    assert set(effects("picky")) == revisions(sim) - BROKEN
    BROKEN.clear()  # the handler is fixed
    status, out = cli(capsys, "--config", cfg)
    assert status == 0, out
    assert "replayed 2, succeeded 2, still failing 0, deleted 2" in out
    assert dlq_files(tmp_path) == {}
    assert set(effects("picky")) == revisions(sim) and set(effects("picky").values()) == {1}
    assert set(effects("audit").values()) == {1}  # the entries were re-driven to picky alone
    status, out = cli(capsys, "--config", cfg)
    assert status == 0 and "replayed 0, succeeded 0, still failing 0, deleted 0" in out


@pytest.mark.integration
def test_replaying_the_same_entries_again_is_idempotent(
    config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(TRANSACTIONS)
    cfg = config()
    BROKEN.update(single_revision_transactions(sim, 2))
    run_pipeline(cfg, sim)
    shutil.copytree(tmp_path / "dlq", tmp_path / "copy")
    BROKEN.clear()
    assert cli(capsys, "--config", cfg)[0] == 0
    before = Counter(EFFECTS)
    # the entries come back (say a delete was lost): another process replays them again
    status, out = cli(capsys, "--config", cfg, "--dlq", f"dir:{tmp_path / 'copy'}", "--json")
    report = json.loads(out)
    assert status == 0 and report["succeeded"] == 2 and report["deleted"] == 2
    assert [e["duplicates"] for e in report["entries"]] == [1, 1]
    assert [e["delivered"] for e in report["entries"]] == [0, 0]
    assert before == EFFECTS


@pytest.mark.integration
def test_entries_that_still_fail_stay_unchanged_and_no_new_entry_is_written(
    config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(TRANSACTIONS)
    cfg = config()
    BROKEN.update(single_revision_transactions(sim, 2))
    run_pipeline(cfg, sim)
    before = dlq_files(tmp_path)
    status, out = cli(capsys, "--config", cfg, "--json")
    report = json.loads(out)
    assert status == 1
    assert (report["replayed"], report["stillFailing"], report["deleted"]) == (2, 2, 0)
    for entry in report["entries"]:
        assert entry["status"] == "failed" and entry["handler"] == "picky"
        assert entry["detail"].startswith("failed again at handler: ValueError: cannot take")
        assert entry["failures"][0]["errorType"] == "ValueError"
    assert dlq_files(tmp_path) == before  # the same two entries, byte for byte; nothing new
    status, out = cli(capsys, "--config", cfg)
    assert status == 1 and out.count("FAILED dead-letter") == 2


@pytest.mark.integration
def test_handler_filter_limit_and_a_record_that_fails_verification_again(
    config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(TRANSACTIONS, tampers=("Transactions#1:data.amount",))
    cfg = config()
    BROKEN.update(single_revision_transactions(sim, 3))
    run_pipeline(cfg, sim)
    letters = [DeadLetter.from_json(text) for text in dlq_files(tmp_path).values()]
    assert sorted(str(letter.handler) for letter in letters) == ["None", "picky", "picky", "picky"]
    BROKEN.clear()
    status, out = cli(capsys, "--config", cfg, "--handler", "picky", "--limit", "2")
    assert status == 0 and "replayed 2, succeeded 2, still failing 0, deleted 2" in out
    status, out = cli(capsys, "--config", cfg, "--handler", "picky")
    assert status == 0 and "replayed 1, succeeded 1, still failing 0, deleted 1" in out
    (left,) = [DeadLetter.from_json(text) for text in dlq_files(tmp_path).values()]
    assert left.stage == "verify"
    status, out = cli(capsys, "--config", cfg)
    assert status == 1 and "failed again at verify: PoisonRecordError: V2" in out
    assert len(dlq_files(tmp_path)) == 1
    with pytest.raises(ConfigurationError, match="--handler nobody: not an active handler"):
        cli(capsys, "--config", cfg, "--handler", "nobody")


@pytest.mark.integration
def test_a_dry_run_runs_no_handler_and_deletes_nothing(
    config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(TRANSACTIONS)
    cfg = config()
    BROKEN.update(single_revision_transactions(sim, 2))
    run_pipeline(cfg, sim)
    before, effects_before = dlq_files(tmp_path), Counter(EFFECTS)
    BROKEN.clear()
    status, out = cli(capsys, "--config", cfg, "--dry-run")
    assert status == 0 and "checked 2, succeeded 2, still failing 0, deleted 0" in out
    assert out.count("decodes and verifies") == 2
    assert dlq_files(tmp_path) == before and effects_before == EFFECTS


@pytest.mark.integration
def test_replay_from_an_sqs_dlq(
    config: Any, moto_server: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = client("sqs", moto_server.endpoint)
    url = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    sim = simulation(TRANSACTIONS)
    cfg = config(dlq=f"sqs:{url}")
    BROKEN.update(single_revision_transactions(sim, 3))
    run_pipeline(cfg, sim)
    BROKEN.intersection_update(single_revision_transactions(sim, 1))  # one of the three stays broken
    status, out = cli(capsys, "--config", cfg)
    assert status == 1 and "replayed 3, succeeded 2, still failing 1, deleted 2" in out
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (
        int(attributes["ApproximateNumberOfMessages"])
        + int(attributes["ApproximateNumberOfMessagesNotVisible"])
        == 1
    )
    assert set(effects("picky")) == revisions(sim) - BROKEN


# --- dead letters over SQS's 256 KiB: the payload bucket ----------------------------------------------


def one_aggregate(sim: Simulation) -> KinesisRecord:
    """The whole simulated stream as one KPL aggregate (well over 256 KiB), in journal order."""
    (records,) = kinesis_records(sim).values()
    users = [u for r in records for u in deaggregate(r)]
    data = aggregate([(u.partition_key, u.explicit_hash_key, u.data) for u in users])
    assert SQS_MAX_BYTES < len(data) < MAX_RECORD_BYTES
    return dataclasses.replace(records[0], data=data)


def corrupted(record: KinesisRecord) -> KinesisRecord:
    """The same aggregate with one byte of its MD5 flipped: poison (V1), not deaggregatable."""
    data = record.data[:-1] + bytes([record.data[-1] ^ 0xFF])
    return dataclasses.replace(record, data=data)


def sqs_and_bucket(moto_server: MotoServer, **attributes: str) -> tuple[Any, str, Any, str]:
    sqs, s3 = client("sqs", moto_server.endpoint), client("s3", moto_server.endpoint)
    url = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:12]}", Attributes=attributes)["QueueUrl"]
    bucket = f"dlq-payloads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return sqs, url, s3, bucket


def bucket_objects(s3: Any, bucket: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def queue_depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.mark.integration
def test_a_poison_aggregate_over_256_kib_goes_through_the_sqs_dlq_and_s3_and_back_byte_identical(
    config: Any, moto_server: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # an entry that fails again is visible again at once: the second replay below reads it too
    sqs, url, s3, bucket = sqs_and_bucket(moto_server, VisibilityTimeout="0")
    poison = corrupted(one_aggregate(simulation(120)))
    assert len(poison.data) > SQS_MAX_BYTES  # the record alone, before base64, is over the limit
    cfg = config(dlq=f"sqs:{url}", dlq_payload_bucket=bucket)
    app = App.from_env(config_file=cfg)
    try:
        result = app.pipeline(sleep=lambda seconds: None).process(poison.shard_id, [poison])
    finally:
        app.close()
    assert (result.dead_lettered, result.halted, result.first_unfinished) == (1, False, None)
    assert result.checkpoint is not None and result.checkpoint[0] == poison.sequence_number
    ((key, payload),) = bucket_objects(s3, bucket).items()
    stored = DeadLetter.from_json(payload.decode())
    assert stored.stage == "deaggregate" and stored.user_record_data is None
    assert base64.b64decode(stored.kinesis_data or "") == poison.data  # the whole record, in S3
    assert queue_depth(sqs, url) == 1

    # replay-dlq reads the pointer; the record is still poison, so the entry and its object stay
    status, out = cli(capsys, "--config", cfg, "--json")
    report = json.loads(out)
    assert status == 1 and (report["replayed"], report["stillFailing"], report["deleted"]) == (1, 1, 0)
    (entry,) = report["entries"]
    assert entry["id"] == stored.id
    assert entry["detail"].startswith("failed again at deaggregate: DeaggregationError")
    assert bucket_objects(s3, bucket) == {key: payload} and queue_depth(sqs, url) == 1

    # and what replay re-drove through the pipeline is the record, byte for byte
    app = App.from_env(config_file=cfg)
    captures: list[Any] = []

    def pipeline_for(dlq: DeadLetterQueue, only: frozenset[str] | None) -> Pipeline:
        captures.append(dlq)
        return Pipeline([], dlq=dlq, store=InMemoryDedupeStore(), allow_hold=False)

    try:
        replayed = replay_dead_letters(app.dlq, Replayer(pipeline_for, []))
    finally:
        app.close()
    assert replayed.failed == 1 and replayed.deleted == 0
    (again,) = captures[0].letters
    assert again.stage == "deaggregate"
    assert base64.b64decode(again.kinesis_data) == poison.data


@pytest.mark.integration
def test_without_a_bucket_the_write_fails_and_the_checkpoint_stays_before_the_record(
    config: Any, moto_server: MotoServer
) -> None:
    sqs, url, s3, bucket = sqs_and_bucket(moto_server)
    sim = simulation(TRANSACTIONS)
    (records,) = kinesis_records(sim).values()
    poison = corrupted(dataclasses.replace(records[1], data=one_aggregate(simulation(120)).data))
    batch = [records[0], poison, *records[2:]]
    metrics = InMemoryMetrics()
    app = App(load_settings(config_file=config(dlq=f"sqs:{url}")), metrics=metrics)
    try:
        result = app.pipeline(sleep=lambda seconds: None).process(poison.shard_id, batch)
    finally:
        app.close()
    assert result.halted and result.halt_reason == "the DLQ write failed"
    assert result.first_unfinished is not None
    assert result.first_unfinished.sequence_number == poison.sequence_number
    assert result.checkpoint is None or int(result.checkpoint[0]) < int(poison.sequence_number)
    assert result.dead_lettered == 0 and metrics.total("dlq_write_failures") == 1
    assert queue_depth(sqs, url) == 0  # nothing shortened was sent

    # the operator adds the bucket: the same batch, read again, gets past the record
    app = App(load_settings(config_file=config(dlq=f"sqs:{url}", dlq_payload_bucket=bucket)))
    try:
        result = app.pipeline(sleep=lambda seconds: None).process(poison.shard_id, batch)
    finally:
        app.close()
    assert not result.halted and result.first_unfinished is None and result.dead_lettered >= 1
    assert result.checkpoint is not None and int(result.checkpoint[0]) > int(poison.sequence_number)
    assert len(bucket_objects(s3, bucket)) == 1


@pytest.mark.integration
def test_a_large_handler_dead_letter_replays_from_s3_and_its_object_is_deleted_after_success(
    config: Any, moto_server: MotoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs, url, s3, bucket = sqs_and_bucket(moto_server)
    sim = simulation(120)
    record = one_aggregate(sim)
    BROKEN.update(single_revision_transactions(sim, 1))
    cfg = config(dlq=f"sqs:{url}", dlq_payload_bucket=bucket)
    app = App.from_env(config_file=cfg)
    try:
        result = app.pipeline(sleep=lambda seconds: None).process(record.shard_id, [record])
    finally:
        app.close()
    assert result.dead_lettered == 1 and result.first_unfinished is None
    ((_, payload),) = bucket_objects(s3, bucket).items()
    stored = DeadLetter.from_json(payload.decode())
    assert stored.handler == "picky"
    assert base64.b64decode(stored.kinesis_data or "") == record.data  # nothing was left out
    assert set(effects("picky")) == revisions(sim) - BROKEN
    BROKEN.clear()  # the handler is fixed
    status, out = cli(capsys, "--config", cfg)
    assert status == 0, out
    assert "replayed 1, succeeded 1, still failing 0, deleted 1" in out
    assert bucket_objects(s3, bucket) == {} and queue_depth(sqs, url) == 0
    assert set(effects("picky")) == revisions(sim) and set(effects("picky").values()) == {1}


@pytest.mark.integration
def test_no_dlq_configured_is_a_configuration_error(config: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigurationError, match="no dead-letter queue is configured"):
        cli(capsys, "--config", config(dlq=""))


# --- Lambda on-failure destination records ---------------------------------------------------------


def on_failure_record(stream_arn: str, records: Sequence[KinesisRecord], shard_id: str) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination when it discards a Kinesis batch."""
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:ledger-consumer",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-25T10:00:06.021Z",
        "KinesisBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": records[0].sequence_number,
            "endSequenceNumber": records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": "2026-11-25T10:00:04.835Z",
            "approximateArrivalOfLastRecord": "2026-11-25T10:00:05.580Z",
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }


def revisions_in(records: Sequence[KinesisRecord]) -> set[tuple[str, int]]:
    out = set()
    for record in records:
        for user in deaggregate(record):
            decoded = decode(user)
            if isinstance(decoded, RevisionDetails):
                out.add((decoded.document_id, decoded.version))
    return out


@pytest.fixture
def stream(kinesis_local: LocalServer) -> Iterator[tuple[Any, str, str]]:
    kinesis = client("kinesis", kinesis_local.endpoint)
    with kinesis_stream(kinesis, 1, prefix="replay") as name:
        arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
        yield kinesis, name, arn


def put(kinesis: Any, name: str, sim: Simulation) -> tuple[str, list[KinesisRecord]]:
    """Put the simulated stream; return the shard and the records as the stream holds them."""
    (records,) = kinesis_records(sim).values()
    results = put_records(kinesis, name, [PutEntry(r.data, r.partition_key) for r in records])
    (shard,) = {r.shard_id for r in results}
    stored = [
        KinesisRecord(r.data, p.sequence_number, r.partition_key, shard)
        for r, p in zip(records, results, strict=True)
    ]
    return shard, stored


@pytest.mark.integration
def test_a_lambda_on_failure_record_replays_exactly_its_range_once(
    config: Any,
    kinesis_local: LocalServer,
    stream: tuple[Any, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kinesis, name, arn = stream
    sim = simulation(TRANSACTIONS)
    shard, stored = put(kinesis, name, sim)
    assert len(stored) >= 10
    window = stored[3:9]
    expected = revisions_in(window)
    assert expected and expected != revisions_in(stored)
    failure_file = tmp_path / "on-failure.json"
    failure_file.write_text(json.dumps(on_failure_record(arn, window, shard)), encoding="utf-8")
    cfg = config(kinesis_endpoint_url=kinesis_local.endpoint)
    status, out = cli(capsys, "--config", cfg, "--lambda-failures", str(failure_file))
    assert status == 0, out
    assert "replayed 1, succeeded 1, still failing 0, deleted 0" in out  # files are never deleted
    assert set(effects("picky")) == set(effects("audit")) == expected
    assert set(EFFECTS.values()) == {1}
    status, out = cli(capsys, "--config", cfg, "--lambda-failures", str(failure_file), "--json")
    (entry,) = json.loads(out)["entries"]
    assert status == 0 and entry["records"] == len(window) and entry["delivered"] == 0
    assert set(EFFECTS.values()) == {1}  # the second replay found every revision done


@pytest.mark.integration
def test_lambda_on_failure_records_from_sqs_with_a_poison_record_and_an_unreadable_message(
    config: Any,
    kinesis_local: LocalServer,
    moto_server: MotoServer,
    stream: tuple[Any, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kinesis, name, arn = stream
    sim = simulation(TRANSACTIONS, tampers=("Transactions#1:data.amount",))
    shard, stored = put(kinesis, name, sim)
    sqs = client("sqs", moto_server.endpoint)
    url = sqs.create_queue(QueueName=f"on-failure-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    document = on_failure_record(arn, stored, shard)  # the whole stream, with its tampered revision
    sns = {
        "Type": "Notification",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
        "Message": json.dumps(document),
    }
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(sns))
    sqs.send_message(QueueUrl=url, MessageBody="not an on-failure record")
    cfg = config(kinesis_endpoint_url=kinesis_local.endpoint)
    status, out = cli(capsys, "--config", cfg, "--lambda-failures", f"sqs:{url}")
    assert status == 1  # the unreadable message
    assert "replayed 1, succeeded 1, still failing 0, deleted 1" in out
    assert "1 poison records dead-lettered" in out and "is unreadable" in out
    (letter,) = [letter for _, letter in DirectoryDeadLetterQueue(tmp_path / "dlq").receive(100)]
    assert letter.stage == "verify" and letter.verification_failures[0]["check"] == "V2"
    tampered = (letter.document_id, letter.version)
    assert set(effects("audit")) == revisions(sim) - {tampered}
    # the same range again (a second on-failure record for it): no second DLQ entry
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(document))
    status, out = cli(capsys, "--config", cfg, "--lambda-failures", f"sqs:{url}")
    assert "0 poison records dead-lettered (1 already were)" in out and "deleted 1" in out
    assert len(list(DirectoryDeadLetterQueue(tmp_path / "dlq").receive(100))) == 1
    assert set(EFFECTS.values()) == {1}


@pytest.mark.integration
def test_a_range_whose_start_is_gone_stays_and_says_why(
    config: Any,
    kinesis_local: LocalServer,
    stream: tuple[Any, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kinesis, name, arn = stream
    shard, stored = put(kinesis, name, simulation(10))
    document = on_failure_record(arn, stored[2:5], shard)
    info = document["KinesisBatchInfo"]
    info["startSequenceNumber"] = str(int(stored[1].sequence_number) + 1)  # between two records
    failure_file = tmp_path / "on-failure.jsonl"
    failure_file.write_text(json.dumps(document) + "\n", encoding="utf-8")
    status, out = cli(
        capsys,
        "--config",
        config(kinesis_endpoint_url=kinesis_local.endpoint),
        "--lambda-failures",
        str(failure_file),
    )
    # kinesis-local refuses an iterator at a sequence number no record has; Kinesis may start later
    assert status == 1 and "still failing 1" in out and "Unable to find record" in out
    assert Counter() == EFFECTS


# --- without servers: the replay loop, on-failure records, reading a range --------------------------


def memory_replayer(store: InMemoryDedupeStore) -> Replayer:
    handlers = [picky(), audit()]

    def pipeline_for(dlq: DeadLetterQueue, only: frozenset[str] | None) -> Pipeline:
        chosen = [h for h in handlers if only is None or h.name in only]
        settings = PipelineSettings(retry=RetryPolicy(max_attempts=1))
        return Pipeline(chosen, dlq=dlq, store=store, settings=settings, allow_hold=False, sleep=no_sleep)

    return Replayer(pipeline_for, [h.name for h in handlers])


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"tried to sleep {seconds} s")


def test_the_replay_loop_visits_every_entry_once_past_the_ones_that_stay(tmp_path: Path) -> None:
    sim = simulation(TRANSACTIONS)
    broken = single_revision_transactions(sim, 12)
    BROKEN.update(broken)
    store = InMemoryDedupeStore()
    dlq = DirectoryDeadLetterQueue(tmp_path / "dlq")
    pipeline = Pipeline(
        [picky(), audit()],
        dlq=dlq,
        store=store,
        sleep=no_sleep,
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=1)),
    )
    for shard, records in kinesis_records(sim).items():
        assert pipeline.process(shard, records).first_unfinished is None
    assert len(dlq) == 12
    BROKEN.difference_update(broken[::3])  # 4 are fixed, 8 still fail
    report = replay_dead_letters(dlq, memory_replayer(store), batch=3)
    assert (report.replayed, report.succeeded, report.failed, report.deleted) == (12, 4, 8, 4)
    assert len({o.id for o in report.outcomes}) == 12 and len(dlq) == 8 and not report.ok
    report = replay_dead_letters(dlq, memory_replayer(store), batch=3, limit=5)
    assert report.replayed == 5 and report.deleted == 0


def test_an_unreadable_entry_stops_the_replay_and_is_reported(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    (tmp_path / "000000000000001-x.json").write_text("{not json", encoding="utf-8")
    report = replay_dead_letters(dlq, memory_replayer(InMemoryDedupeStore()))
    assert report.replayed == 0 and not report.ok
    assert report.errors[0].startswith("cannot read the dead-letter queue: JSONDecodeError")


def test_an_entry_without_data_or_of_an_inactive_handler_stays(tmp_path: Path) -> None:
    dlq = DirectoryDeadLetterQueue(tmp_path)
    blank = DeadLetter("decode", "E", "m", "src", None, "s", "1", 0, None, None, None)
    gone = DeadLetter(
        "handler", "E", "m", "src", None, "s", "2", 0, None, None, "4AEA6g==", handler="retired"
    )
    dlq.put(blank)
    dlq.put(gone)
    report = replay_dead_letters(dlq, memory_replayer(InMemoryDedupeStore()))
    details = sorted(o.detail for o in report.outcomes)
    assert details == [
        f"dead letter {blank.id} carries no record data",
        "handler retired is not active: activate it to replay this entry",
    ]
    assert len(dlq) == 2 and report.failed == 2


DOC = {
    "requestContext": {
        "requestId": "r-1",
        "functionArn": "arn:aws:lambda:eu-west-1:1:function:f",
        "condition": "RecordAgeExceeded",
    },
    "version": "1.0",
    "timestamp": "2026-11-25T10:00:06.021Z",
    "KinesisBatchInfo": {
        "shardId": "shardId-000000000001",
        "startSequenceNumber": "20",
        "endSequenceNumber": "40",
        "batchSize": 3,
        "streamArn": "arn:aws:kinesis:eu-west-1:123456789012:stream/ledger",
    },
}


def test_on_failure_records_are_read_raw_wrapped_in_sns_listed_or_as_json_lines() -> None:
    failure = LambdaFailure.from_document(DOC)
    assert (
        failure.stream_name,
        failure.shard_id,
        failure.start_sequence_number,
        failure.end_sequence_number,
    ) == ("ledger", "shardId-000000000001", "20", "40")
    assert (failure.request_id, failure.condition, failure.batch_size) == ("r-1", "RecordAgeExceeded", 3)
    sns = {"Type": "Notification", "Message": json.dumps(DOC)}
    assert LambdaFailure.from_document(sns) == failure
    assert parse_lambda_failures(json.dumps([DOC, sns]), "f") == [failure, failure]
    assert parse_lambda_failures(json.dumps(DOC) + "\n\n" + json.dumps(sns) + "\n", "f") == [failure, failure]
    consumer = dict(
        DOC,
        KinesisBatchInfo=dict(
            DOC["KinesisBatchInfo"], streamArn=DOC["KinesisBatchInfo"]["streamArn"] + "/consumer/c:1"
        ),
    )
    assert LambdaFailure.from_document(consumer).stream_name == "ledger"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{oops", "not JSON or JSON Lines"),
        (json.dumps({"Records": []}), "no KinesisBatchInfo"),
        (json.dumps({"KinesisBatchInfo": {"shardId": "s"}}), "KinesisBatchInfo has no startSequenceNumber"),
        (
            json.dumps(dict(DOC, KinesisBatchInfo=dict(DOC["KinesisBatchInfo"], endSequenceNumber="10"))),
            "no valid sequence number range",
        ),
    ],
)
def test_what_is_not_an_on_failure_record_is_an_input_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_lambda_failures(text, "input.json")


class FakeKinesis:
    """One shard holding records 10, 20, ... 50; pages of two; throttles ``throttles`` calls first."""

    def __init__(self, throttles: int = 0) -> None:
        self.seqs = [10, 20, 30, 40, 50]
        self.throttles = throttles
        self.calls = 0

    def get_shard_iterator(self, **request: Any) -> dict[str, Any]:
        assert request["ShardIteratorType"] == "AT_SEQUENCE_NUMBER" and request["StreamName"] == "ledger"
        start = int(request["StartingSequenceNumber"])
        return {
            "ShardIterator": str(next((i for i, s in enumerate(self.seqs) if s >= start), len(self.seqs)))
        }

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        self.calls += 1
        if self.throttles:
            self.throttles -= 1
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "GetRecords")
        i = int(ShardIterator)
        page = self.seqs[i : i + 2]
        records = [{"SequenceNumber": str(s), "Data": b"%d" % s, "PartitionKey": "k"} for s in page]
        return {"Records": records, "NextShardIterator": str(i + len(page)), "MillisBehindLatest": 0}


def failure_for(start: int, end: int) -> LambdaFailure:
    return LambdaFailure(
        "shardId-000000000001", str(start), str(end), "arn:aws:kinesis:eu-west-1:1:stream/ledger"
    )


def test_read_range_reads_exactly_start_to_end_inclusive() -> None:
    sleeps: list[float] = []
    kinesis = FakeKinesis(throttles=1)
    got = read_range(kinesis, failure_for(20, 40), limit=2, sleep=sleeps.append)
    assert [r.sequence_number for r in got] == ["20", "30", "40"]
    assert {r.shard_id for r in got} == {"shardId-000000000001"} and got[0].data == b"20"
    assert len(sleeps) == 1  # the throttled call was retried after a backoff


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (15, 40, "the first record is 20, not the start"),
        (20, 45, "the end record is not in the shard"),
        (40, 60, "read 2 records but not the end record"),
    ],
)
def test_read_range_refuses_a_range_it_cannot_read_whole(start: int, end: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_range(FakeKinesis(), failure_for(start, end), sleep=lambda s: None, max_empty_polls=3)
