"""Metrics backends (EMF, Prometheus endpoint) and structured logs, fed by a real pipeline run."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.api.router import Router
from qldbstream.io.logs import JsonFormatter, configure_logging
from qldbstream.io.metrics import BLANK_DIMENSION, EmfMetrics, PrometheusMetrics, build_metrics
from qldbstream.pipeline.batch import Pipeline
from tests.support.streams import kinesis_records, simulation


class ListDLQ:
    def __init__(self) -> None:
        self.letters: list[object] = []

    def put(self, letter: object) -> None:
        self.letters.append(letter)

    def receive(self, limit: int = 10):  # type: ignore[no-untyped-def]
        return iter(())

    def delete(self, handle: str) -> None:
        pass


def run_pipeline(metrics: object) -> None:
    sim = simulation(30, duplicates=0.3, tampers=("Transactions#1:data.amount",))
    router = Router("obs")
    router.add_revision_handler(lambda r, ctx: None)
    pipeline = Pipeline([router], dlq=ListDLQ(), metrics=metrics)  # type: ignore[arg-type]
    for shard, records in kinesis_records(sim).items():
        pipeline.process(shard, records)


def test_pipeline_records_the_documented_metrics() -> None:
    m = InMemoryMetrics()
    run_pipeline(m)
    assert m.total("records_in", stage="kinesis") > 0
    assert m.total("records_in", stage="user") > m.total("records_in", stage="kinesis")
    assert m.total("verification_failures", check="V2") == 1
    assert m.total("dlq_writes", stage="verify") == 1
    assert m.total("dedupe_hits", handler="obs") > 0
    assert m.total("records_verified", record_type="REVISION_DETAILS") > 0
    assert any(name == "iterator_age_ms" for name, _ in m.gauges)
    assert any(name == "handler_latency" for name, _ in m.samples)


def test_emf_documents_follow_the_embedded_metric_format() -> None:
    out = io.StringIO()
    emf = EmfMetrics(out=out, function="consumer")
    run_pipeline(emf)
    emf.flush()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "qldbstream" and isinstance(doc["_aws"]["Timestamp"], int)
        (dims,) = directive["Dimensions"]
        assert "function" in dims and all(isinstance(doc[d], str) and doc[d].strip() for d in dims)
        for metric in directive["Metrics"]:
            assert metric["Name"] in doc and metric["Unit"] in ("Count", "Seconds", "Milliseconds", "None")
    failures = [d for d in docs if "verification_failures" in d]
    assert failures and failures[0]["check"] == "V2" and failures[0]["verification_failures"] == 1
    out.truncate(0)
    emf.flush()  # flushed means cleared
    assert out.getvalue().strip("\x00") == ""


def test_emf_dimension_values_are_never_blank() -> None:
    """CloudWatch rejects an EMF document with an empty dimension value (all its metrics are lost)."""
    out = io.StringIO()
    emf = EmfMetrics(out=out, region=" ")
    run_pipeline(emf)  # a tampered revision: dlq_writes with handler="" (no handler saw it)
    emf.incr("dlq_writes", stage="deaggregate", handler=None)  # type: ignore[arg-type]
    emf.gauge("iterator_age_ms", 5.0, shard="")
    emf.observe("handler_latency", 0.5, handler="h" * 2000)
    emf.flush()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    values = [
        (d, doc[d])
        for doc in docs
        for (dims,) in [doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"]]
        for d in dims
    ]
    assert values and all(isinstance(v, str) and v.strip() and len(v) <= 1024 for _, v in values)
    dead = [doc for doc in docs if "dlq_writes" in doc]
    assert {(doc["stage"], doc["handler"]) for doc in dead} == {
        ("verify", BLANK_DIMENSION),
        ("deaggregate", BLANK_DIMENSION),
    }
    assert all(
        sorted(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == ["handler", "region", "stage"]
        for doc in dead
    )
    assert {doc["region"] for doc in docs} == {BLANK_DIMENSION}
    (age,) = [doc for doc in docs if "iterator_age_ms" in doc and doc["shard"] == BLANK_DIMENSION]
    assert age["iterator_age_ms"] == 5.0
    (long,) = [doc for doc in docs if doc.get("handler", "").startswith("hhh")]
    assert long["handler"] == "h" * 1024 and long["handler_latency"] == [0.5]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_endpoint_is_scrapable_during_a_run() -> None:
    registry = CollectorRegistry()
    prom = PrometheusMetrics(registry)
    port = free_port()
    server = prom.serve(port)
    try:
        run_pipeline(prom)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'qldbstream_verification_failures_total{check="V2"} 1.0' in body
    assert 'qldbstream_dlq_writes_total{handler="",stage="verify"} 1.0' in body
    assert "qldbstream_handler_latency_bucket" in body
    assert "qldbstream_records_in_total" in body


def test_build_metrics_picks_the_backend() -> None:
    assert isinstance(build_metrics("emf"), EmfMetrics)
    assert type(build_metrics("none")).__name__ == "NullMetrics"


@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("qldbstream")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


def test_json_logs_carry_the_record_position(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("qldbstream.test").warning(
        "handler %s failed", "audit", extra={"shardId": "shardId-000000000001", "sequenceNumber": "4960"}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "handler audit failed" and entry["level"] == "WARNING"
    assert entry["shardId"] == "shardId-000000000001" and entry["sequenceNumber"] == "4960"
    assert entry["time"].endswith("Z")
    assert capsys.readouterr().out == ""  # stdout stays free for the KCL protocol and EMF


def test_json_formatter_renders_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, "f", 1, "failed", (), __import__("sys").exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


def test_every_runtime_builds_its_metrics_in_the_configured_namespace(monkeypatch) -> None:
    """The App (the worker's, the KCL's and Lambda's) honours metrics_namespace and dimensions."""
    from qldbstream.app.assembly import App
    from qldbstream.io.metrics import EmfMetrics

    monkeypatch.setenv("QLDBSTREAM_METRICS", "emf")
    monkeypatch.setenv("QLDBSTREAM_METRICS_NAMESPACE", "Ledger/Prod")
    monkeypatch.setenv("QLDBSTREAM_METRICS_DIMENSIONS", "Stream=bank")
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", "")
    app = App.from_env()
    try:
        assert isinstance(app.metrics, EmfMetrics)
        assert app.metrics.namespace == "Ledger/Prod"
        assert app.metrics.static == {"Stream": "bank"}
    finally:
        app.close()
