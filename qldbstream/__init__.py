"""qldbstream: consume, verify and replay Amazon QLDB journal streams from Amazon Kinesis.

The public API for handler authors is :mod:`qldbstream.api`, re-exported here::

    from qldbstream import Router, Handler, HandlerContext

The package's rooms, from the inside out (``docs/architecture.md``): ``core`` (pure stages: no
I/O, no clock, no boto3), ``pipeline`` (the policy that drives them over one shard's batch, and
the ports it needs), ``io`` (Kinesis, DynamoDB, SQS, S3, files, metrics backends, logs), ``app``
(settings and plugins, assembled once), ``runtimes`` (Lambda, the worker, the KCL) and ``cli``.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time the API is imported lazily (see __getattr__)
    from qldbstream.api import *  # noqa: F403

    __version__: str


def _version() -> str:
    """The installed distribution's version, looked up once, when first asked for."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("qldbstream")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        found = "0.0.0"
    globals()["__version__"] = found  # later reads are plain attribute reads
    return found


def __getattr__(name: str) -> object:
    # Lazy too: importlib.metadata.version() scans the installed distributions (tens of ms of a
    # Lambda cold start); only the DLQ envelope and `qldbstream --version` need it.
    if name == "__version__":
        return _version()
    # Lazy: `import qldbstream` (and so the Lambda handler's cold start) does not pay for the API.
    # import_module, not `from qldbstream import api`: that form asks this very function for
    # `api` while the submodule is not imported yet, and would recurse.
    if name.startswith("__") or name == "api":
        raise AttributeError(f"module 'qldbstream' has no attribute {name!r}")
    api = importlib.import_module("qldbstream.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'qldbstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    api = importlib.import_module("qldbstream.api")
    return [*api.__all__, "__version__"]
