"""The boto3 clients of a replication target: Kinesis to write to, KMS to seal raw copies with.

The handler takes factories (:data:`ClientFactory`, :data:`KmsClientFactory`) so that tests can
point them at local servers; :func:`default_client` and :func:`default_kms_client` are the real
ones, with short timeouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qldbstream_handlers.replication.settings import TargetConfig

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

__all__ = ["ClientFactory", "KmsClientFactory", "default_client", "default_kms_client"]

#: Builds the Kinesis client of a target (tests point it at local servers).
ClientFactory = Callable[[TargetConfig], "KinesisClient"]
#: Builds the KMS client of a target's region (``raw_copy_kms_key_id``).
KmsClientFactory = Callable[[TargetConfig], Any]


#: a target region that does not answer must not hold the shard for botocore's default minute
_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30}


def default_client(config: TargetConfig) -> KinesisClient:
    """A boto3 Kinesis client for the target's region and endpoint, with bounded retries."""
    from qldbstream.api.aws import aws_client

    client: KinesisClient = aws_client(
        "kinesis", region_name=config.region, endpoint_url=config.endpoint, config_options=_TIMEOUTS
    )
    return client


def default_kms_client(config: TargetConfig) -> Any:
    """A boto3 KMS client for the target's region and endpoint, with bounded retries."""
    from qldbstream.api.aws import aws_client

    return aws_client(
        "kms", region_name=config.region, endpoint_url=config.endpoint, config_options=_TIMEOUTS
    )
