"""What AWS errors mean for qldbstream: the one list of throttling and transient error codes.

The pipeline's :func:`~qldbstream.pipeline.reliability.classify` knows no AWS; this module has
the AWS rule (:func:`is_transient`), which the application passes to its pipeline
(:meth:`qldbstream.app.assembly.App.pipeline`), and :func:`classify` with the rule applied.
Everything in the edges that asks "is this AWS error worth a retry" asks here:

* :data:`KINESIS_THROTTLING_CODES` - Kinesis's "slow down" codes, the only ones its calls retry in place;
* :data:`THROTTLING_ERROR_CODES` - "slow down and call again", any service (includes Kinesis's);
* :data:`TRANSIENT_ERROR_CODES` - those plus server-side and timeout codes: retried, and when they
  persist the shard halts (never a dead letter);
* any 5xx answer, and botocore's connection and HTTP client errors, are transient too.

Error codes are read by duck typing (``exc.response["Error"]["Code"]``, as botocore's
``ClientError`` carries them); botocore itself is imported only to recognise its connection errors.
"""

from __future__ import annotations

from typing import Any

from qldbstream.pipeline.reliability import Disposition
from qldbstream.pipeline.reliability import classify as _classify

__all__ = [
    "KINESIS_THROTTLING_CODES",
    "THROTTLING_ERROR_CODES",
    "TRANSIENT_ERROR_CODES",
    "classify",
    "error_code",
    "is_transient",
    "status_code",
]

#: Kinesis's throttling codes: the only errors the Kinesis calls retry in place.
KINESIS_THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}
)
#: Error codes that mean "slow down and call again", any service.
THROTTLING_ERROR_CODES = KINESIS_THROTTLING_CODES | frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
#: Error codes worth a retry: throttling, and the service (or a transaction) being busy or down.
TRANSIENT_ERROR_CODES = THROTTLING_ERROR_CODES | frozenset(
    {
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
    }
)


def _response(exc: BaseException) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def error_code(exc: BaseException) -> str:
    """The AWS error code an exception carries (a botocore ``ClientError``); ``""`` when none."""
    return str(_response(exc).get("Error", {}).get("Code", "") or "")


def status_code(exc: BaseException) -> int:
    """The HTTP status of the AWS answer an exception carries; 0 when none."""
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc: BaseException) -> bool:
    """An AWS error worth a retry: a transient code, a 5xx answer, or no answer at all (botocore
    could not connect, or the connection broke)."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    else:
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return True
    if not _response(exc):
        return False
    return error_code(exc) in TRANSIENT_ERROR_CODES or status_code(exc) >= 500


def classify(
    exc: BaseException,
    *,
    retryable: tuple[type[BaseException], ...] = (),
    poison: tuple[type[BaseException], ...] = (),
) -> Disposition:
    """:func:`qldbstream.pipeline.reliability.classify` with the AWS rule (:func:`is_transient`)."""
    return _classify(exc, retryable=retryable, poison=poison, transient=is_transient)
