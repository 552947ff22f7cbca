"""Every boto3 client qldbstream builds carries an explicit retry configuration (standard mode, a
fixed number of attempts the environment cannot change), and no module builds one another way.

The attempts are counted on a local HTTP server on 127.0.0.1 that answers every request with a
retryable 500 (standard mode waits up to a second between attempts: these tests take ~1 s).
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from botocore.exceptions import ClientError

from qldbstream.app.assembly import App
from qldbstream.app.config import Settings, load_settings
from qldbstream.core.errors import ConfigurationError
from qldbstream.io.clients import DEFAULT_MAX_ATTEMPTS, aws_client, client_config
from qldbstream.io.dlq import SqsDeadLetterQueue

PACKAGE = Path(__file__).resolve().parents[2] / "qldbstream"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class _Failing(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append(self.headers.get("X-Amz-Target", ""))
        body = b'{"__type":"InternalFailure","message":"always failing"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_endpoint() -> Iterator[tuple[str, list[str]]]:
    _Failing.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Failing.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_client_carries_standard_retries_and_the_attempts_asked_for() -> None:
    kinesis = aws_client("kinesis", region_name="us-east-1", endpoint_url="http://127.0.0.1:9", **CREDENTIALS)
    assert kinesis.meta.config.retries == {"mode": "standard", "total_max_attempts": DEFAULT_MAX_ATTEMPTS}
    sqs = aws_client("sqs", region_name="eu-west-1", max_attempts=1, **CREDENTIALS)
    assert sqs.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert sqs.meta.region_name == "eu-west-1"
    assert client_config(5, connect_timeout=7).connect_timeout == 7
    with pytest.raises(ValueError, match="at least 1"):
        client_config(0)


def test_the_environment_does_not_change_the_attempts(
    failing_endpoint: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, requests = failing_endpoint
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    kinesis = aws_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint, max_attempts=2, **CREDENTIALS
    )
    with pytest.raises(ClientError, match="InternalFailure"):
        kinesis.list_streams()
    assert requests == ["Kinesis_20131202.ListStreams"] * 2  # not 7: one retry, then qldbstream decides


def test_the_apps_clients_use_the_aws_max_attempts_setting(
    failing_endpoint: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, requests = failing_endpoint
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name.upper(), value)
    app = App(Settings(region="us-east-1", endpoint_url=endpoint, aws_max_attempts=1), handlers=[])
    for service in ("kinesis", "dynamodb", "sqs", "s3", "kms"):
        assert app.client(service).meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    with pytest.raises(ClientError):
        app.client("dynamodb").list_tables()
    assert requests == ["DynamoDB_20120810.ListTables"]  # one attempt: no botocore retry at all
    default = App(Settings(region="us-east-1"), handlers=[])
    assert default.client("sqs").meta.config.retries["total_max_attempts"] == DEFAULT_MAX_ATTEMPTS


def test_the_dlq_and_its_payload_bucket_get_the_apps_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name.upper(), value)
    settings = load_settings(
        {
            "QLDBSTREAM_DLQ": "sqs:https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
            "QLDBSTREAM_DLQ_PAYLOAD_BUCKET": "ledger-dlq-payloads/stream-a",
            "QLDBSTREAM_AWS_MAX_ATTEMPTS": "4",
            "QLDBSTREAM_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_REGION": "us-east-1",
        }
    )
    dlq = App(settings, handlers=[]).dlq
    assert isinstance(dlq, SqsDeadLetterQueue)
    assert (dlq.payload_bucket, dlq.payload_prefix) == ("ledger-dlq-payloads", "stream-a/")
    assert dlq.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert dlq.payload_client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert dlq.payload_client.meta.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QLDBSTREAM_AWS_MAX_ATTEMPTS": "0"}, "aws_max_attempts must be >= 1"),
        ({"QLDBSTREAM_DLQ_PAYLOAD_BUCKET": "Not_A_Bucket"}, "dlq_payload_bucket: 'Not_A_Bucket' is not"),
        ({"QLDBSTREAM_DLQ_PAYLOAD_BUCKET": "s3://bucket"}, "dlq_payload_bucket: 's3://bucket' is not"),
    ],
)
def test_bad_values_fail_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_settings(env)


def test_no_module_builds_a_boto3_client_around_the_helper() -> None:
    """Every client goes through qldbstream.io.clients: the core's and the built-in handlers'."""
    pattern = re.compile(r"boto3\.(client|resource)\(|boto3\.session\.Session\(|Session\(\)\.client\(")
    handlers = PACKAGE.parent / "handlers" / "qldbstream_handlers"
    assert handlers.is_dir()
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in sorted([*PACKAGE.rglob("*.py"), *handlers.rglob("*.py")])
        if path.name != "clients.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
