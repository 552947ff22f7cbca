"""The KCL worker's task role against the real KCL MultiLangDaemon: what does it call?

The daemon is Java: the static analysis cannot see it. This test runs it (amazon-kclpy's jars, KCL 3.1.3)
against kinesis-local and moto server, with its three tables created exactly as ``ecs-worker.yaml``
creates them, and records every call: DynamoDB through a recording proxy in front of moto, Kinesis from
kinesis-local's debug log (the daemon's requests are the CBOR ones). Each call must be one the task role
allows on that table or stream, and CreateTable/UpdateTable must never happen - that is why the role
has neither. Slow (the KCL waits a random 1-30 s before its first lease): marked integration and slow.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.cfn import evaluate, grants
from tests.deploy.test_iam import ECS_BASE, KCL_TABLE_ACTIONS
from tests.support import servers
from tests.support.aws import client, kinesis_stream
from tests.support.kcl import DaemonSettings, start_daemon, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESSOR = Path(__file__).resolve().parents[1] / "integration" / "kcl_smoke_processor.py"
RECORDS = 20


class RecordingProxy:
    """HTTP/1.1 reverse proxy on 127.0.0.1 that records each DynamoDB call's (operation, table, index)."""

    def __init__(self, upstream_port: int) -> None:
        self.calls: list[tuple[str, str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                try:
                    doc = json.loads(body or b"{}")
                except ValueError:
                    doc = {}
                tables = [doc["TableName"]] if "TableName" in doc else sorted(doc.get("RequestItems", {}))
                for table in tables or [""]:
                    proxy.calls.append((operation, table, doc.get("IndexName", "")))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                skip = ("host", "content-length", "connection")
                upstream.request(
                    "POST", self.path, body, {k: v for k, v in self.headers.items() if k.lower() not in skip}
                )
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "server",
                        "date",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kinesis_local_debug(tmp_path: Path) -> Iterator[servers.LocalServer]:
    """kinesis-local logging every request (its debug log names each action)."""
    plain, tls = servers.free_port(), servers.free_port()
    env = {
        **os.environ,
        "KINESIS_MOCK_CERT_PATH": str(servers.KINESIS_LOCAL_DIR / "server.json"),
        "KINESIS_MOCK_PLAIN_PORT": str(plain),
        "KINESIS_MOCK_TLS_PORT": str(tls),
        "LOG_LEVEL": "DEBUG",
    }
    command = ["node", "-r", str(servers.LOOPBACK_PRELOAD), str(servers.KINESIS_LOCAL_DIR / "main.js")]
    server = servers._start(
        "kinesis-local", command, env, plain, "/healthcheck", tmp_path, servers.LocalServer
    )
    yield server
    server.stop()


def _create_kwargs(props: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation table properties -> CreateTable arguments."""
    keys = ("TableName", "BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")
    return {k: props[k] for k in keys if k in props}


def test_the_kcl_daemon_needs_only_what_the_task_role_grants(
    tmp_path: Path, kinesis_local_debug: servers.LocalServer, templates: dict[str, dict[str, Any]]
) -> None:
    app = f"kclperm-{uuid.uuid4().hex[:8]}"
    worker = evaluate(templates["ecs-worker.yaml"], {**ECS_BASE, "ApplicationName": app})
    moto = servers.start_moto_server(tmp_path)
    try:
        dynamodb = client("dynamodb", moto.endpoint)
        tables = {}
        for logical in ("LeaseTable", "WorkerMetricStatsTable", "CoordinatorStateTable"):
            props = worker.resources[logical]["Properties"]
            dynamodb.create_table(**_create_kwargs(props))
            tables[props["TableName"]] = f"GetAtt:{logical}.Arn"
        kinesis = client("kinesis", kinesis_local_debug.endpoint)
        output = tmp_path / "processed.jsonl"
        with (
            RecordingProxy(int(moto.endpoint.rsplit(":", 1)[1])) as proxy,
            kinesis_stream(kinesis, 2) as stream,
        ):
            kinesis.put_records(
                StreamName=stream,
                Records=[{"Data": b"r%d" % i, "PartitionKey": str(i)} for i in range(RECORDS)],
            )
            settings = DaemonSettings(
                stream,
                app,
                "w1",
                (sys.executable, str(PROCESSOR)),
                kinesis_local_debug.endpoint,
                proxy.endpoint,
            )
            daemon = start_daemon(
                settings, tmp_path, env={"KCL_SMOKE_OUTPUT": str(output), "KCL_SMOKE_WORKER": "w1"}
            )
            try:
                deadline = time.monotonic() + 100
                while time.monotonic() < deadline:
                    lines = output.read_text().splitlines() if output.exists() else []
                    if sum('"record"' in line for line in lines) >= RECORDS:
                        break
                    assert daemon.alive(), daemon.log_tail()
                    time.sleep(0.5)
                else:
                    pytest.fail(f"the daemon processed too little in 100 s:\n{daemon.log_tail()}")
            finally:
                stop_all([daemon])
            calls = set(proxy.calls)
    finally:
        moto.stop()

    allowed = {(g.action, g.resource) for g in grants(worker, "TaskRole")}
    assert {table for _, table, _ in calls} == set(tables), calls  # all three tables in use
    assert ("Query", app, "LeaseOwnerToLeaseKeyIndex") in calls
    for operation, table, index in calls:
        assert operation not in ("CreateTable", "UpdateTable"), (
            f"the daemon {operation} {table}: its tables differ from KCL's"
        )
        resource = tables[table] + (f"/index/{index}" if index else "")
        wanted = (f"dynamodb:{operation}", resource if not index else tables[table] + "/index/*")
        assert wanted in allowed, (
            f"the daemon called {operation} on {table} {index}; the task role does not allow it"
        )
    assert {op for op, _, _ in calls} <= {*KCL_TABLE_ACTIONS, "Query"}

    log = kinesis_local_debug.log_path.read_text(errors="replace")
    daemon_actions = {
        m for line in log.splitlines() if "cbor" in line for m in re.findall(r"action=(\w+)", line)
    }
    assert {"GetRecords", "GetShardIterator", "ListShards"} <= daemon_actions
    stream_arn = f"arn:aws:kinesis:eu-west-1:123456789012:stream/{ECS_BASE['StreamName']}"
    assert {(f"kinesis:{a}", stream_arn) for a in daemon_actions} <= allowed
