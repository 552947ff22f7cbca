"""An embedded local AWS for the demo: moto's server, in this process, on 127.0.0.1.

One endpoint serves Kinesis, DynamoDB, SQS, S3 and CloudWatch, with no account and no Docker.
Needs moto, a dependency of qldbstream-tools (``pip install -e ./tools`` in a checkout). Credentials
are dummies that only this endpoint accepts; nothing here can reach real AWS.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from qldbstream.core.errors import ConfigurationError

__all__ = ["LocalAws"]

REGION = "us-east-1"
_CREDENTIALS: dict[str, Any] = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class LocalAws:
    """``with LocalAws() as aws: aws.client("kinesis")`` - a moto server for the block's duration."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> LocalAws:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise ConfigurationError(
                "the embedded local AWS needs moto, a dependency of qldbstream-tools: pip install -e ./tools"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # ThreadedMotoServer defaults to 0.0.0.0: bind to loopback only, on a free port.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        # moto keeps its state in process-wide backends, across server restarts: start empty.
        import urllib.request

        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - our own loopback endpoint
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str) -> Any:
        from qldbstream.io.clients import aws_client

        return aws_client(
            service, endpoint_url=self.endpoint, region_name=REGION, max_attempts=3, **_CREDENTIALS
        )

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
