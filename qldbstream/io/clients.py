"""boto3 clients, all built one way: with an explicit retry configuration.

botocore retries on its own: by default in its ``legacy`` mode, with a number of attempts that
``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE`` or ``~/.aws/config`` can change behind qldbstream's
back. qldbstream has retry loops of its own (Kinesis throttling in
:func:`~qldbstream.io.kinesis_reader.call_throttled`, handler retries in the pipeline, a halted shard
read again later), and every botocore attempt multiplies theirs. So every client qldbstream
builds goes through :func:`aws_client`: ``standard`` retry mode (exponential backoff with
jitter, and a client-side retry quota that stops retrying when most calls fail) and a fixed
number of attempts (``aws_max_attempts``, 3 by default, the first call included) that the
environment does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_MAX_ATTEMPTS", "RETRY_MODE", "aws_client", "client_config"]

RETRY_MODE = "standard"  # (spelled out in client_config for the type checker)
#: botocore attempts per call, the first one included (``aws_max_attempts``)
DEFAULT_MAX_ATTEMPTS = 3


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS, **options: Any) -> Any:
    """A ``botocore.config.Config`` with the retry configuration (and any other ``options``)."""
    from botocore.config import Config

    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    # total_max_attempts counts the first call; botocore's own max_attempts counts retries only
    return Config(retries={"mode": "standard", "total_max_attempts": max_attempts}, **options)


def aws_client(
    service: str,
    *,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    config_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``boto3.client(service, ...)`` with :func:`client_config` (plus ``config_options``, e.g.
    timeouts); ``kwargs`` (credentials) pass on."""
    import boto3

    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=region_name,
        endpoint_url=endpoint_url,
        config=client_config(max_attempts, **(config_options or {})),
        **kwargs,
    )
