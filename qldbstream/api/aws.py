"""Public API for handlers that call AWS: how to build a client, and how to tell a transient error.

Opt-in (``from qldbstream.api.aws import aws_client, is_retryable``): :mod:`qldbstream.api` itself
does not import it. Why these two are public:

* :func:`aws_client` - a handler's boto3 clients should retry the way qldbstream's own do
  (``standard`` mode, a fixed number of attempts that the environment cannot multiply), because
  the pipeline retries a failed batch again on top of botocore's retries.
* :func:`is_retryable` - a handler that catches an AWS error and raises its own must say
  whether it is worth retrying (:class:`~qldbstream.api.RetryableError`) or not; this is the
  pipeline's own classification, so the handler and the pipeline agree.
"""

from __future__ import annotations

from qldbstream.io.aws_errors import classify  # the pipeline's classification with the AWS rule
from qldbstream.io.clients import DEFAULT_MAX_ATTEMPTS, aws_client
from qldbstream.pipeline.reliability import Disposition

__all__ = ["DEFAULT_MAX_ATTEMPTS", "aws_client", "is_retryable"]


def is_retryable(exc: BaseException) -> bool:
    """Whether the pipeline treats ``exc`` as it treats a :class:`~qldbstream.api.RetryableError`:
    retried with backoff and, when the retries run out, the shard halts at the record.

    True for :class:`~qldbstream.api.RetryableError`, ``ConnectionError`` and ``TimeoutError``,
    botocore's connection and endpoint errors, and AWS throttling codes and 5xx responses. False
    for poison and halt errors and for anything else (which the pipeline retries a few times and
    then dead-letters).
    """
    return classify(exc) is Disposition.RETRY_THEN_HALT
