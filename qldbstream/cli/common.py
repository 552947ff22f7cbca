"""What several sub-commands share: the options that name a stream, and how flags become settings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qldbstream.io.files import FileInput

__all__ = ["STREAM_FLAGS", "add_stream_options", "environ_with_flags", "read_input"]

#: ``--flag`` (its argparse dest) -> the setting it overrides (flags win over the file and the environment)
STREAM_FLAGS = {"stream": "STREAM_NAME", "endpoint_url": "ENDPOINT_URL", "region": "REGION"}


def add_stream_options(p: Any) -> None:
    """``--config``, ``--stream``, ``--region``, ``--endpoint-url``: the same on every worker command."""
    p.add_argument("--config", metavar="FILE", help="settings file (TOML or JSON); QLDBSTREAM_* env wins")
    p.add_argument("--stream", metavar="NAME", help="the Kinesis data stream (setting stream_name)")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: from the environment)")
    p.add_argument("--endpoint-url", metavar="URL", help="one endpoint for Kinesis, DynamoDB, SQS (local)")


def environ_with_flags(args: argparse.Namespace, flags: Mapping[str, str] = STREAM_FLAGS) -> dict[str, str]:
    """This process's environment, with ``QLDBSTREAM_<SETTING>`` set from every flag given."""
    env = dict(os.environ)
    for flag, name in flags.items():
        value = getattr(args, flag)
        if value:
            env[f"QLDBSTREAM_{name}"] = value
    return env


def read_input(name: str) -> FileInput:
    """``read_file(name)``; ``-`` reads standard input (spooled to a temporary file, as the readers
    recognise a format by seeking)."""
    from qldbstream.io.files import read_file

    if name != "-":
        return read_file(name)
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".stdin") as tmp:
        tmp.write(sys.stdin.buffer.read())
        tmp.flush()
        return read_file(tmp.name)
