"""Routing journal records to handler functions: registration as data.

A :class:`Router` holds routes - a record kind, filters (table, operation, predicate) and a
function - declared with decorators that record the route and return the function unchanged,
each backed by an explicit ``add_…`` method::

    from qldbstream import Router

    router = Router("audit")

    @router.revision(table="Transactions", operation="insert")
    def on_new_transaction(revision, ctx):
        ctx.logger.info("new transaction %s", revision.document_id)

    router.add_block_summary_handler(on_block)          # the same, without a decorator

A router is a :class:`~qldbstream.api.handler.Handler`: the pipeline hands it a batch of records in
stream order and it calls each matching route in turn. The first route that raises stops the
batch; the router reports which record failed (:class:`~qldbstream.api.handler.BatchItemError`) so
the pipeline knows that every record before it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from qldbstream.api.handler import BatchItemError, Handler, HandlerContext
from qldbstream.core.decode import BlockSummary, ControlRecord, JournalRecord, RevisionDetails

__all__ = ["Operation", "Route", "Router", "operation_of"]

Operation = Literal["insert", "update", "delete", "redacted"]
Operation.__doc__ = (
    """What a revision did to its document (:func:`operation_of`); the ``operation`` route filter."""
)
_OPERATIONS: frozenset[str] = frozenset({"insert", "update", "delete", "redacted"})
Kind = Literal["revision", "block_summary", "control"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler function and what it receives."""

    kind: Kind
    fn: Callable[[Any, HandlerContext], Any]
    name: str
    tables: frozenset[str] | None = None
    operations: frozenset[str] | None = None
    predicate: Callable[[Any], bool] | None = None
    control_types: frozenset[str] | None = None

    def matches(self, record: JournalRecord) -> bool:
        if self.kind == "revision":
            if not isinstance(record, RevisionDetails):
                return False
            if self.tables is not None and record.table_name not in self.tables:
                return False
            if self.operations is not None and operation_of(record) not in self.operations:
                return False
        elif self.kind == "block_summary":
            if not isinstance(record, BlockSummary):
                return False
        elif not isinstance(record, ControlRecord) or (
            self.control_types is not None and record.control_record_type not in self.control_types
        ):
            return False
        return self.predicate is None or bool(self.predicate(record))


def operation_of(revision: RevisionDetails) -> str:
    """``insert`` (version 0), ``update``, ``delete`` (no data), or ``redacted`` (dataHash only)."""
    if revision.is_deleted:
        return "delete"
    if revision.is_redacted:
        return "redacted"
    return "insert" if revision.version == 0 else "update"


def _names(
    value: str | Sequence[str] | None, what: str, allowed: frozenset[str] | None = None
) -> frozenset[str] | None:
    if value is None:
        return None
    names = frozenset([value] if isinstance(value, str) else value)
    if not names:
        raise ValueError(f"{what} must name at least one value")
    if allowed is not None and not names <= allowed:
        raise ValueError(f"unknown {what} {sorted(names - allowed)}; expected some of {sorted(allowed)}")
    return names


class Router(Handler):
    """A named set of routes; register it as a plugin or pass it to an app directly."""

    def __init__(self, name: str) -> None:
        if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"a router name must be a simple identifier, not {name!r}")
        self.name = name
        self.routes: list[Route] = []

    # --- explicit registration -----------------------------------------------------------
    def add_revision_handler(
        self,
        fn: Callable[[RevisionDetails, HandlerContext], Any],
        *,
        table: str | Sequence[str] | None = None,
        operation: Operation | Sequence[Operation] | None = None,
        predicate: Callable[[RevisionDetails], bool] | None = None,
        name: str | None = None,
    ) -> None:
        """Call ``fn(revision, ctx)`` for every REVISION_DETAILS that matches the filters."""
        self._add(
            Route(
                "revision",
                fn,
                name or str(getattr(fn, "__name__", "revision")),
                _names(table, "table"),
                _names(operation, "operation", _OPERATIONS),
                predicate,
            )
        )

    def add_block_summary_handler(
        self,
        fn: Callable[[BlockSummary, HandlerContext], Any],
        *,
        predicate: Callable[[BlockSummary], bool] | None = None,
        name: str | None = None,
    ) -> None:
        """Call ``fn(block_summary, ctx)`` for every BLOCK_SUMMARY (one per committed transaction)."""
        self._add(
            Route(
                "block_summary",
                fn,
                name or str(getattr(fn, "__name__", "block_summary")),
                predicate=predicate,
            )
        )

    def add_control_handler(
        self,
        fn: Callable[[ControlRecord, HandlerContext], Any],
        *,
        control_type: str | Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        """Call ``fn(control, ctx)`` for CONTROL records (``CREATED``, ``COMPLETED``)."""
        types = _names(control_type, "control type", frozenset({"CREATED", "COMPLETED"}))
        self._add(Route("control", fn, name or str(getattr(fn, "__name__", "control")), control_types=types))

    def _add(self, route: Route) -> None:
        if not callable(route.fn):
            raise TypeError(f"{route.name!r} is not callable")
        self.routes.append(route)

    # --- decorators ----------------------------------------------------------------------
    def revision(
        self,
        *,
        table: str | Sequence[str] | None = None,
        operation: Operation | Sequence[Operation] | None = None,
        predicate: Callable[[RevisionDetails], bool] | None = None,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_revision_handler`; returns the function unchanged."""

        def register(fn: F) -> F:
            self.add_revision_handler(fn, table=table, operation=operation, predicate=predicate)
            return fn

        return register

    def block_summary(
        self, fn: F | None = None, *, predicate: Callable[[BlockSummary], bool] | None = None
    ) -> Any:
        """Decorator form of :meth:`add_block_summary_handler` (``@router.block_summary`` or with args)."""

        def register(f: F) -> F:
            self.add_block_summary_handler(f, predicate=predicate)
            return f

        return register(fn) if fn is not None else register

    def control(self, fn: F | None = None, *, control_type: str | Sequence[str] | None = None) -> Any:
        """Decorator form of :meth:`add_control_handler` (``@router.control`` or with args)."""

        def register(f: F) -> F:
            self.add_control_handler(f, control_type=control_type)
            return f

        return register(fn) if fn is not None else register

    # --- Handler -------------------------------------------------------------------------
    def wants(self, record: JournalRecord) -> bool:
        return any(route.matches(record) for route in self.routes)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for index, record in enumerate(records):
            event_ctx = ctx.for_record(record, index)
            for route in self.routes:
                if route.matches(record):
                    try:
                        route.fn(record, event_ctx)
                    except Exception as exc:
                        raise BatchItemError(index, exc, route.name) from exc

    def __repr__(self) -> str:
        return f"Router({self.name!r}, {len(self.routes)} routes)"
