"""The AWS rule of the edges: one list of throttling/transient codes, given to the pipeline."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from qldbstream.io import aws_errors
from qldbstream.pipeline import reliability
from qldbstream.pipeline.reliability import Disposition


def client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


def test_one_list_kinesis_throttling_within_throttling_within_transient() -> None:
    assert aws_errors.KINESIS_THROTTLING_CODES < aws_errors.THROTTLING_ERROR_CODES
    assert aws_errors.THROTTLING_ERROR_CODES < aws_errors.TRANSIENT_ERROR_CODES


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("ThrottlingException"), True),
        (client_error("TransactionInProgressException"), True),
        (client_error("Anything", 500), True),
        (client_error("ConditionalCheckFailedException"), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (ValueError("no response"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert aws_errors.is_transient(exc) is transient


def test_error_code_and_status_by_duck_typing() -> None:
    assert aws_errors.error_code(client_error("SlowDown", 503)) == "SlowDown"
    assert aws_errors.status_code(client_error("SlowDown", 503)) == 503
    assert aws_errors.error_code(ValueError()) == "" and aws_errors.status_code(ValueError()) == 0


def test_the_pipelines_classify_knows_aws_only_through_the_rule_it_is_given() -> None:
    throttled = client_error("KMSThrottlingException")
    assert reliability.classify(throttled) is Disposition.RETRY_THEN_DEAD_LETTER
    assert reliability.classify(throttled, transient=aws_errors.is_transient) is Disposition.RETRY_THEN_HALT
    assert aws_errors.classify(throttled) is Disposition.RETRY_THEN_HALT
