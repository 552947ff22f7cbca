"""The public API: everything a handler author imports, and nothing else.

``from qldbstream import Router, Handler, HandlerContext`` (re-exported from :mod:`qldbstream`)::

    router = Router("audit-log")

    @router.revision(table="Account", operation="update")
    def on_update(revision: RevisionDetails, ctx: HandlerContext) -> None: ...

Here: the handler lifecycle (:mod:`~qldbstream.api.handler`), routing
(:mod:`~qldbstream.api.router`), metrics (:mod:`~qldbstream.api.metrics`), the journal record
types, the error classes that decide what happens to a failed record, and four helpers about
records: :func:`operation_of`, :func:`dedupe_key` (a record's identity, for idempotent effects),
:func:`dot` (QLDB's hash combinator, to check a revision's hash) and :func:`ion_hash` (the Ion
hash of a value, to recompute a revision's hash from values stored elsewhere). Opt-in submodules, not
imported here because they reach AWS or the pipeline's stores:

* :mod:`qldbstream.api.aws` - ``aws_client`` and ``is_transient``, for handlers that call AWS;
* :mod:`qldbstream.api.kinesis` - KPL packing and ``put_records``, to write a stream copy;
* :mod:`qldbstream.api.masking` - masked and sealed record forms, for handlers that copy records out;
* :mod:`qldbstream.api.ports` - ``Checkpoint`` and ``DeadLetter``, for plugins that store them.

docs/plugins.md ("API reference") says why each name is public. The built-in handlers
(``qldbstream_handlers``) and ``examples/`` use only these modules; tests/unit/test_public_api.py
keeps it so. Everything under :mod:`qldbstream.core`, :mod:`qldbstream.pipeline`,
:mod:`qldbstream.io`, :mod:`qldbstream.app` and :mod:`qldbstream.runtimes` is internal and may
change between releases.
"""

from __future__ import annotations

from typing import Any

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext, SetupContext
from qldbstream.api.metrics import InMemoryMetrics, Metrics, NullMetrics
from qldbstream.api.router import Operation, Route, Router, operation_of
from qldbstream.core.decode import (
    BlockAddress,
    BlockSummary,
    ControlRecord,
    JournalRecord,
    RecordType,
    RevisionDetails,
    RevisionSummary,
)
from qldbstream.core.dedupe import dedupe_key
from qldbstream.core.errors import (
    ConfigurationError,
    HaltShardError,
    PoisonRecordError,
    QldbStreamError,
    RetryableError,
)
from qldbstream.core.ion.hash import ion_hash as _ion_hash
from qldbstream.core.qldb_hash import dot

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
    "RecordType",
    "RetryableError",
    "RevisionDetails",
    "RevisionSummary",
    "Route",
    "Router",
    "SetupContext",
    "dedupe_key",
    "dot",
    "ion_hash",
    "operation_of",
]


def ion_hash(value: Any) -> bytes:
    """The Ion hash (SHA-256, amazon-ion/ion-hash spec) of one Ion value, as QLDB hashes it.

    ``value`` is an amazon-ion ``simpleion`` value or a plain Python value by amazon-ion's mapping
    (``str`` a string, ``Decimal`` a decimal, ``datetime`` a timestamp); it is hashed on the Ion
    data model (timestamp precision and offset, decimal exponents, symbols vs strings, typed
    nulls, annotations), never on a JSON form. With :func:`dot` it recomputes a revision's hash
    from values kept outside the stream (qldb-stream-format.md §4-§5): a live revision's hash is
    ``dot(ion_hash(metadata), ion_hash(data))``, a redacted one's ``dot(ion_hash(metadata),
    dataHash)`` and a deleted one's ``ion_hash(metadata)``. The PostgreSQL migration's
    ``qldbstream pg-verify`` re-checks migrated history this way.
    """
    return _ion_hash(value)


#: The public submodules: the ones above plus the opt-in ones. Nothing else under
#: ``qldbstream`` may be imported by a plugin (tests/unit/test_public_api.py).
PUBLIC_MODULES = frozenset(
    {
        "qldbstream",
        "qldbstream.api",
        "qldbstream.api.aws",
        "qldbstream.api.handler",
        "qldbstream.api.kinesis",
        "qldbstream.api.masking",
        "qldbstream.api.metrics",
        "qldbstream.api.ports",
        "qldbstream.api.router",
    }
)
