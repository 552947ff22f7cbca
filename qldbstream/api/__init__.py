"""The public API: everything a handler author imports, and nothing else.

``from qldbstream import Router, Handler, HandlerContext`` (re-exported from :mod:`qldbstream`)::

    router = Router("audit-log")

    @router.revision(table="Account", operation="update")
    def on_update(revision: RevisionDetails, ctx: HandlerContext) -> None: ...

The built-in handlers (``qldbstream_handlers``) use only what is listed here; a test keeps it so.
Everything under :mod:`qldbstream.core`, :mod:`qldbstream.pipeline`, :mod:`qldbstream.io` and
:mod:`qldbstream.runtimes` is internal and may change between releases.
"""

from __future__ import annotations

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics, Metrics, NullMetrics
from qldbstream.api.router import Operation, Route, Router
from qldbstream.core.decode import (
    BlockAddress,
    BlockSummary,
    ControlRecord,
    JournalRecord,
    RevisionDetails,
    RevisionSummary,
)
from qldbstream.core.errors import (
    ConfigurationError,
    HaltShardError,
    PoisonRecordError,
    QldbStreamError,
    RetryableError,
)

__all__ = [
    "BatchItemError",
    "BlockAddress",
    "BlockSummary",
    "ConfigurationError",
    "ControlRecord",
    "HaltShardError",
    "Handler",
    "HandlerContext",
    "InMemoryMetrics",
    "JournalRecord",
    "Metrics",
    "NullMetrics",
    "Operation",
    "PoisonRecordError",
    "QldbStreamError",
    "RetryableError",
    "RevisionDetails",
    "RevisionSummary",
    "Route",
    "Router",
    "SetupContext",
]
