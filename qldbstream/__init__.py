"""qldbstream: consume, verify and replay Amazon QLDB journal streams from Amazon Kinesis.

The public API for handler authors::

    from qldbstream import Router, Handler, HandlerContext
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time these are imported lazily (see __getattr__)
    from qldbstream.decode import BlockSummary, ControlRecord, RevisionDetails
    from qldbstream.handler import BatchItemError, Handler, HandlerContext, SetupContext
    from qldbstream.router import Router

try:
    __version__ = version("qldbstream")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "BatchItemError",
    "BlockSummary",
    "ControlRecord",
    "Handler",
    "HandlerContext",
    "RevisionDetails",
    "Router",
    "SetupContext",
    "__version__",
]


def __getattr__(name: str) -> object:
    # Lazy: `import qldbstream` (and the Lambda handler's cold start) does not pay for the API.
    if name in ("Router",):
        from qldbstream.router import Router

        return Router
    if name in ("Handler", "HandlerContext", "SetupContext", "BatchItemError"):
        from qldbstream import handler

        return getattr(handler, name)
    if name in ("BlockSummary", "ControlRecord", "RevisionDetails"):
        from qldbstream import decode

        return getattr(decode, name)
    raise AttributeError(f"module 'qldbstream' has no attribute {name!r}")
