"""The PII scan: personal data configured for masking never leaves qldbstream unmasked.

A simulated bank ledger whose ``Customers`` hold SSNs and card numbers - with PartiQL statements
that carry them as literals (no parameters), and a tampered customer revision - goes through the
standalone worker on moto server (127.0.0.1) with **every built-in handler** (audit, fraud,
analytics, export, replication, workflow) plus a handler that fails on customers, masking on with
the seed's rules (ssn -> HASH, card number -> PARTIAL 4), JSON logs at DEBUG (qldbstream's loggers
and botocore's), EMF and Prometheus metrics, and dead letters to a directory and to SQS (with an S3
payload bucket). Then every output - files (Parquet read back as values), SQS messages, DynamoDB
items, the replica stream, S3 objects, logs, metrics - is searched for every raw value, as text,
base64 (any alignment) and hex: no hit. The same run with masking off finds them (the scan can fail).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from qldbstream_tools.demo.aws import create_resources, drain_queue
from qldbstream_tools.demo.options import HANDLERS, DemoNames, worker_environ
from qldbstream_tools.simulate import DeliveryOptions, SimulationConfig, Workload, parse_tamper, simulate
from qldbstream_tools.simulate.bankdata import INSERT_CUSTOMER
from qldbstream_tools.simulate.session import TransactionBuilder

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.records import KinesisRecord
from qldbstream.io.dlq import DirectoryDeadLetterQueue, SqsDeadLetterQueue
from qldbstream.io.kinesis_reader import read_stream
from qldbstream.io.kinesis_writer import PutEntry, put_records
from qldbstream.io.logs import JsonFormatter
from qldbstream.io.metrics import EmfMetrics, PrometheusMetrics
from qldbstream.pipeline.dlq import DeadLetter
from tests.support.aws import REGION, client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration

HASH_KEY = "pii-scan-hash-key-0123456789"

#: the extra handler that fails on every first version of a customer, quoting the document
failing = Router("failing")


@failing.revision(table="Customers")
def _reject_customer(revision: Any, ctx: HandlerContext) -> None:
    if revision.version == 0:
        ctx.logger.debug("rejecting %s", {"document": revision.data})
        raise PoisonRecordError(f"customer rejected: {dict(revision.data)!r}")


class _Aws:
    """What the demo's ``create_resources`` needs: clients on the moto server."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        return client(service, self.endpoint)


class _BothQueues:
    """Every dead letter to the directory DLQ and to the SQS DLQ (two real queues)."""

    def __init__(self, *queues: Any) -> None:
        self.queues = queues

    def put(self, letter: DeadLetter) -> None:
        for queue in self.queues:
            queue.put(letter)

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def delete(self, handle: str) -> None:
        pass


class _BothMetrics:
    """EMF (to a buffer) and Prometheus (a private registry) at once."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.emf_out = io.StringIO()
        self.emf = EmfMetrics(out=self.emf_out)
        self.prometheus = PrometheusMetrics(CollectorRegistry())

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        self.emf.incr(name, value, **dimensions)
        self.prometheus.incr(name, value, **dimensions)

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self.emf.gauge(name, value, **dimensions)
        self.prometheus.gauge(name, value, **dimensions)

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        self.emf.observe(name, value, **dimensions)
        self.prometheus.observe(name, value, **dimensions)

    def flush(self) -> None:
        self.emf.flush()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        self.flush()
        return self.emf_out.getvalue().encode() + generate_latest(self.prometheus.registry)


@pytest.fixture
def literal_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new customer's transaction also runs statements with its SSN and card number as literals."""
    run = TransactionBuilder.run

    def with_literals(self: TransactionBuilder, text: str, *parameters: Any) -> int:
        if text == INSERT_CUSTOMER and parameters and isinstance(parameters[0], dict):
            ssn, card = parameters[0]["ssn"], parameters[0]["card_number"]
            run(self, f"SELECT * FROM Customers AS c WHERE c.ssn = '{ssn}'")
            run(self, f"UPDATE Customers AS c SET c.card_number = '{card}' WHERE c.ssn = '{ssn}'")
        return run(self, text, *parameters)

    monkeypatch.setattr(TransactionBuilder, "run", with_literals)


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """Put every logger the run touches back as it was."""
    names = ["qldbstream", "botocore", ""]
    saved = {
        n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers), logging.getLogger(n).propagate)
        for n in names
    }
    try:
        yield
    finally:
        for n, (level, handlers, propagate) in saved.items():
            logger = logging.getLogger(n)
            for h in logger.handlers:
                if h not in handlers:
                    h.close()
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate


def raw_values(records: list[bytes]) -> list[str]:
    """Every SSN and card number the source stream holds (documents, tampered ones included, and
    statement texts), read from the records themselves."""
    found: set[str] = set()

    def walk(value: Any, name: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, name)
        elif name.lower() in ("ssn", "card_number") and value is not None:
            found.add(str(value))

    for data in records:
        walk(simpleion.loads(data))
    return sorted(found)


def encodings(value: str) -> list[bytes]:
    raw = value.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):  # base64 of the value at any offset inside a larger encoded text
        encoded = base64.b64encode(b"\0" * shift + raw)
        forms.append(encoded[4 if shift else 0 :][:-4] if shift else encoded[:-4])
    return forms


def hits(outputs: dict[str, bytes], values: list[str]) -> dict[str, list[str]]:
    table = {v: encodings(v) for v in values}
    out: dict[str, list[str]] = {}
    for name, blob in outputs.items():
        found = [v for v, forms in table.items() if any(f in blob for f in forms)]
        if found:
            out[name] = found
    return out


def _files(root: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":  # compressed pages: read the values back
            out[str(path)] = json.dumps(pq.read_table(path).to_pylist(), default=repr).encode()
        else:
            out[str(path)] = path.read_bytes()
    return out


def _aws_outputs(aws: _Aws, names: DemoNames, queues: list[str], buckets: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    sqs, dynamodb, s3 = aws.client("sqs"), aws.client("dynamodb"), aws.client("s3")
    for url in queues:
        out[f"sqs:{url}"] = "\n".join(drain_queue(sqs, url)).encode()
    for table in [t for t in dynamodb.list_tables()["TableNames"] if t.startswith(names.stream)]:
        items = dynamodb.scan(TableName=table)["Items"]
        out[f"dynamodb:{table}"] = json.dumps(items, default=repr).encode()
    for bucket in buckets:
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            out[f"s3:{bucket}/{obj['Key']}"] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    from qldbstream.io.clients import aws_client

    west = aws_client(
        "kinesis", region_name=names.replica_region, endpoint_url=names.endpoint, max_attempts=3
    )
    replica = [
        u.data for kr in read_stream(west, names.replica_stream, poll_interval=0.05) for u in deaggregate(kr)
    ]
    out["kinesis:replica"] = b"\n".join(replica)
    return out


def run_ledger(moto: MotoServer, output: Path, *, masking: bool) -> tuple[dict[str, bytes], list[str], int]:
    """The whole run; returns every output by name, the raw values of the source, the dead letters."""
    from qldbstream_handlers.fraud import default_bus

    from qldbstream.app.assembly import App
    from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
    from qldbstream.runtimes.worker import Worker, WorkerOptions

    aws = _Aws(moto.endpoint)
    names = DemoNames(f"pii-{uuid.uuid4().hex[:8]}", output, moto.endpoint)
    resources = create_resources(aws, names, 2)
    sim = simulate(
        SimulationConfig(
            seed=11,
            workload=Workload(transactions=80),
            delivery=DeliveryOptions(
                aggregate=True, shards=2, duplicate_rate=0.05, reorder_window=2, completed=False
            ),
            tampers=(parse_tamper("Customers#2:data.ssn"), parse_tamper("Transactions#3:data.amount")),
        )
    )
    sources = [
        u.data for d in sim.deliveries for u in deaggregate(KinesisRecord(d.data, "1", d.partition_key))
    ]
    values = raw_values(sources)
    assert len(values) >= 6 and any(b"c.ssn = '" in s for s in sources)  # literals in statements too
    put_records(
        aws.client("kinesis"),
        names.stream,
        [PutEntry(d.data, d.partition_key, d.explicit_hash_key) for d in sim.deliveries],
    )
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    dlq_url = sqs.create_queue(QueueName=f"{names.stream}-dlq")["QueueUrl"]
    bucket = f"{names.stream}-dlq-payloads"
    s3.create_bucket(Bucket=bucket)
    environ = {
        **worker_environ(
            names,
            shards=2,
            alert_queue_url=resources.alert_queue_url,
            security_topic_arn=resources.security_topic_arn,
        ),
        "QLDBSTREAM_HANDLERS": ",".join([*HANDLERS, "tests.integration.test_pii_scan:failing"]),
        "QLDBSTREAM_HANDLER_AUDIT__DATA": "true",
        # block summaries too: their statements carry the values as literals
        "QLDBSTREAM_HANDLER_REPLICATION__RECORDS": "revision_details,block_summary,control",
        "QLDBSTREAM_LOG_LEVEL": "DEBUG",
        "QLDBSTREAM_LOG_FORMAT": "json",
        "QLDBSTREAM_RETRY_MAX_ATTEMPTS": "2",
        "QLDBSTREAM_RETRY_BASE_DELAY_MS": "10",
    }
    if masking:
        key_id = aws.client("kms").create_key(Description="pii scan DLQ")["KeyMetadata"]["KeyId"]
        environ |= {
            "QLDBSTREAM_MASKING": "true",
            "QLDBSTREAM_MASKING_HASH_KEY": HASH_KEY,
            "QLDBSTREAM_MASKING_DLQ_KMS_KEY_ID": key_id,
        }
    directory = DirectoryDeadLetterQueue(names.dlq_dir)
    dlq = _BothQueues(directory, SqsDeadLetterQueue(sqs, dlq_url, payload_bucket=bucket, s3=lambda: s3))
    metrics = _BothMetrics()
    debug_log = io.StringIO()
    root_handler = logging.StreamHandler(debug_log)
    root_handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(root_handler)
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    bus: list[Any] = []
    unsubscribe = default_bus.subscribe(bus.append)
    try:
        app = App.from_env(environ=environ, metrics=metrics, dlq=dlq)
        qldbstream_log = io.StringIO()
        for handler in logging.getLogger("qldbstream").handlers:  # the JSON handler from_env installed
            if getattr(handler, "_qldbstream", False):
                handler.setStream(qldbstream_log)  # type: ignore[attr-defined]
        try:
            by_name = {h.name: h for h in app.handlers}
            store = DynamoDBCheckpointStore(app.client("dynamodb"), app.settings.checkpoint_table)
            options = WorkerOptions.from_settings(app.settings, poll_interval=0.05)
            worker = Worker.from_app(app, store, options=options)
            report = worker.run(until_caught_up=True)
            assert report.reason != "halted", report
            by_name["fraud"].drain()
            by_name["fraud"].flush(HandlerContext("fraud", None, metrics=app.metrics))
            by_name["analytics"].drain()
            with contextlib.suppress(Exception):
                logging.getLogger("qldbstream.handler.audit").exception(
                    "after the run: %s", app.settings.masked()
                )
        finally:
            app.close()
    finally:
        unsubscribe()
        logging.getLogger().removeHandler(root_handler)
    letters = len(directory)
    outputs = {
        **_files(output),
        **_aws_outputs(
            aws, names, [resources.alert_queue_url, resources.security_queue_url, dlq_url], [bucket]
        ),
        "logs:qldbstream": qldbstream_log.getvalue().encode(),
        "logs:root-debug": debug_log.getvalue().encode(),
        "metrics:emf+prometheus": metrics.text(),
        "bus:alerts": repr(bus).encode(),
    }
    return outputs, values, letters


def test_no_raw_value_leaves_with_masking_on(
    moto_server: MotoServer,
    tmp_path: Path,
    literal_statements: None,
    saved_logging: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    outputs, values, letters = run_ledger(moto_server, tmp_path / "on", masking=True)
    assert letters >= 3  # the tampered customer, the tampered transaction, the failing handler's
    assert outputs["kinesis:replica"] and outputs["logs:root-debug"] and outputs["metrics:emf+prometheus"]
    assert b"botocore" in outputs["logs:root-debug"]  # botocore's DEBUG lines were there to scan
    assert any(name.startswith("s3:") or b"sealed" in blob for name, blob in outputs.items() if "dlq" in name)
    assert b"c.ssn = '" in outputs["kinesis:replica"]  # masked statements reached the replica
    assert hits(outputs, values) == {}


def test_the_scan_finds_the_values_with_masking_off(
    moto_server: MotoServer,
    tmp_path: Path,
    literal_statements: None,
    saved_logging: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    outputs, values, _ = run_ledger(moto_server, tmp_path / "off", masking=False)
    found = hits(outputs, values)
    assert "kinesis:replica" in found and any(".jsonl" in n or "audit" in n for n in found)
    assert any(n.startswith("sqs:") for n in found) and any("dlq" in n for n in found)


def test_qldbstream_run_at_debug_with_masking_starts_and_leaks_nothing(
    moto_server: MotoServer, tmp_path: Path, literal_statements: None
) -> None:
    """``qldbstream run`` in its own process, masking on, log_level DEBUG: botocore's DEBUG lines
    (request and response bodies) go through the filter - the run starts, finishes, leaks nothing."""
    import os
    import subprocess
    import sys

    kinesis = client("kinesis", moto_server.endpoint)
    stream = f"pii-run-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    sim = simulate(SimulationConfig(seed=12, workload=Workload(transactions=40)))
    put_records(kinesis, stream, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
    sources = [
        u.data for d in sim.deliveries for u in deaggregate(KinesisRecord(d.data, "1", d.partition_key))
    ]
    values = raw_values(sources)
    audit = tmp_path / "audit.jsonl"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "QLDBSTREAM_MASKING": "true",
        "QLDBSTREAM_MASKING_HASH_KEY": HASH_KEY,
        "QLDBSTREAM_LOG_LEVEL": "DEBUG",
        "QLDBSTREAM_HANDLERS": "audit",
        "QLDBSTREAM_HANDLER_AUDIT__PATH": str(audit),
        "QLDBSTREAM_HANDLER_AUDIT__DATA": "true",
    }
    args = ["--stream", stream, "--endpoint-url", moto_server.endpoint, "--region", REGION]
    args += ["--checkpoint-table", f"{stream}-cp", "--create-table", "--until-caught-up", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "qldbstream", "run", *args, "--poll-interval", "0.05"],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"botocore" in done.stderr and audit.stat().st_size > 0
    outputs = {"stderr": done.stderr, "stdout": done.stdout, "audit": audit.read_bytes()}
    assert hits(outputs, values) == {}
    assert hits({"source": b"".join(sources)}, values) == {"source": values}  # the scan sees them there
