"""The workflow handler: one execution per verified revision (and per fraud alert), run or started.

**Local mode** runs the definition with the :class:`~qldbstream_handlers.workflow.Interpreter`
inside ``handle_batch``: the execution is finished (its side effects done) before the batch
returns, so the checkpoint never passes a revision whose workflow has not run. **Remote mode**
starts a Step Functions execution instead and does not wait for it.

Idempotency: an execution is named ``<documentId>-<version>`` (``alert-<alertId>`` for alerts);
a done marker (local) or the execution name itself (remote: ``ExecutionAlreadyExists``) turns a
redelivery into a no-op. See :mod:`~qldbstream_handlers.workflow.executions`.

What happens next when an execution fails (after the definition's own Retry and Catch):

* a task failed with a transient error (connection, throttling, 5xx) → :class:`RetryableError`:
  the pipeline retries the revision and then stops the shard, the checkpoint holds;
* any other failure → :class:`WorkflowFailedError`, a poison record: dead-lettered with the
  execution's error and cause, so an operator can fix and replay it.

Alerts arrive from the fraud handler's bus during *its* flush; an alert execution that fails
transiently raises there (the fraud handler's checkpoint holds and it publishes again); one that
fails for good is logged and counted (``workflow_executions{outcome=failed}``) and marked done.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from qldbstream.api import (
    ConfigurationError,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    Operation,
    PoisonRecordError,
    RetryableError,
    RevisionDetails,
    Router,
    SetupContext,
)
from qldbstream.api.aws import is_retryable
from qldbstream_handlers.workflow import example
from qldbstream_handlers.workflow.definition import load_definition
from qldbstream_handlers.workflow.events import (
    AlertBook,
    AlertLike,
    alert_event,
    execution_name,
    revision_event,
)
from qldbstream_handlers.workflow.executions import (
    DoneMarkers,
    DynamoDBDoneMarkers,
    InMemoryDoneMarkers,
    StepFunctionsStarter,
)
from qldbstream_handlers.workflow.interpreter import Execution, Interpreter
from qldbstream_handlers.workflow.settings import WorkflowSettings
from qldbstream_handlers.workflow.tasks import ServiceIntegrations, TaskRegistry

__all__ = ["WorkflowFailedError", "WorkflowHandler"]

log = logging.getLogger("qldbstream.handler.workflow")


class WorkflowFailedError(PoisonRecordError):
    """An execution ended FAILED for a reason a retry will not fix (dead-letter the revision)."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(f"workflow execution {execution.name} failed: {execution.error}: {execution.cause}")
        self.execution = execution


class WorkflowHandler(Router):
    """See the module docstring; ``settings`` is the handler's own settings dict.

    A :class:`~qldbstream.api.Router` with one revision route (the ``tables`` and ``operations``
    settings are its filters): each revision starts or runs one execution, and the router names
    the revision that failed.
    """

    name = "workflow"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        tasks: TaskRegistry | None = None,
        services: example.ExampleServices | None = None,
        clients: Callable[[str], Any] | None = None,
        bus: Any = None,
        markers: DoneMarkers | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("workflow")
        self.settings = s = WorkflowSettings.parse(settings or {})
        self.add_revision_handler(
            self.on_revision,
            table=None if s.tables is None else sorted(s.tables),
            operation=None if s.operations is None else cast("list[Operation]", sorted(s.operations)),
            name=self.name,
        )
        self._client_factory = clients or self._boto3_client
        self._clients: dict[str, Any] = {}
        self._bus = bus
        self._unsubscribe: Callable[[], None] | None = None
        self.metrics: Metrics = NullMetrics()
        self.alerts = AlertBook()
        self.services = services
        self.interpreter: Interpreter | None = None
        self.starter: StepFunctionsStarter | None = None
        if s.mode == "remote":
            assert s.state_machine_arn is not None
            self.starter = StepFunctionsStarter(_Lazy(self, "stepfunctions"), s.state_machine_arn)
        else:
            definition, registry = self._local_definition(tasks)
            self.interpreter = Interpreter(
                definition,
                registry,
                ServiceIntegrations(self.client),
                name=self.name,
                sleep=sleep,
                clock=clock,
            )
        if markers is not None:
            self.markers: DoneMarkers = markers
        elif s.done_markers.startswith("dynamodb:"):
            self.markers = DynamoDBDoneMarkers(_Lazy(self, "dynamodb"), s.done_markers.split(":", 1)[1])
        else:
            self.markers = InMemoryDoneMarkers()

    # --- construction --------------------------------------------------------------------
    def _local_definition(self, tasks: TaskRegistry | None) -> tuple[dict[str, Any], TaskRegistry]:
        s = self.settings
        if s.definition == "example":
            assert s.security_alert_topic_arn is not None and s.compliance_table_name is not None
            if self.services is None:
                self.services = example.ExampleServices(s.high_value_min, s.small_amount_limit)
            definition = example.definition(
                s.security_alert_topic_arn,
                s.compliance_table_name,
                s.function_arn_prefix or example.DEFAULT_FUNCTION_ARN_PREFIX,
                s.substitutions,
            )
            return definition, tasks or example.build_tasks(self.services)
        path = Path(s.definition)
        if not path.is_file():
            raise ConfigurationError(f"workflow handler: definition {s.definition!r} is not a file")
        registry = tasks or self._load_tasks()
        return load_definition(path, s.substitutions), registry

    def _load_tasks(self) -> TaskRegistry:
        spec = self.settings.tasks
        if not spec:
            return TaskRegistry()  # only service integrations, then
        module_name, _, attribute = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"workflow handler: tasks {spec!r} cannot be loaded ({exc})") from None
        if callable(target) and not isinstance(target, TaskRegistry):
            target = target(self.settings) if inspect.signature(target).parameters else target()
        if not isinstance(target, TaskRegistry):
            raise ConfigurationError(f"workflow handler: tasks {spec!r} is not a TaskRegistry")
        return target

    def _boto3_client(self, service: str) -> Any:
        from qldbstream.api.aws import aws_client

        return aws_client(service, region_name=self.settings.region, endpoint_url=self.settings.endpoint_url)

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (built on first use)."""
        if service not in self._clients:
            self._clients[service] = self._client_factory(service)
        return self._clients[service]

    # --- lifecycle -----------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self.metrics = ctx.metrics
        if self.settings.alerts and self._unsubscribe is None:
            bus = self._bus
            if bus is None:
                try:
                    from qldbstream_handlers.fraud import default_bus
                except ImportError:  # pragma: no cover - the fraud handler ships in the same package
                    log.warning("workflow: the fraud handler is not installed; no alerts")
                    return
                bus = default_bus
            self._unsubscribe = bus.subscribe(self.on_alert)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        self.metrics = ctx.metrics
        super().handle_batch(records, ctx)

    def on_revision(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        """Start (or run) the revision's execution, with the alerts raised for it so far."""
        alerts = self.alerts.for_revision(revision.document_id, revision.version)
        event = revision_event(revision, alerts)
        self.execute(execution_name(revision.document_id, revision.version), event, trigger="revision")

    # --- alerts --------------------------------------------------------------------------
    def on_alert(self, alert: AlertLike) -> None:
        """Bus subscriber: remember the alert; start its own execution if its rule says so."""
        self.alerts.add(alert)
        if not self.settings.starts_for_rule(alert.rule):
            return
        name = f"alert-{alert.id}"
        try:
            self.execute(name, alert_event(alert), trigger="alert")
        except PoisonRecordError as exc:
            log.error("workflow: alert execution %s failed and will not be retried: %s", name, exc)
            self.markers.mark_done(name, "FAILED")

    # --- executions ----------------------------------------------------------------------
    def execute(self, name: str, event: dict[str, Any], *, trigger: str) -> str:
        """Run or start one execution; returns the outcome. Raises an error that says what is next."""
        if self.starter is not None:
            started_as = self.starter.start(name, event)
            self.metrics.incr("workflow_executions", mode="remote", outcome=started_as, trigger=trigger)
            return started_as
        assert self.interpreter is not None
        if self.markers.is_done(name):
            self.metrics.incr("workflow_executions", mode="local", outcome="already-done", trigger=trigger)
            return "already-done"
        started = time.monotonic()
        execution = self.interpreter.run(event, name=name)
        self.metrics.observe("workflow_execution_seconds", time.monotonic() - started, trigger=trigger)
        outcome = execution.status.lower()
        self.metrics.incr("workflow_executions", mode="local", outcome=outcome, trigger=trigger)
        if execution.status == "FAILED":
            raise self._failure(execution)
        self.markers.mark_done(name, execution.status)
        return outcome

    def _failure(self, execution: Execution) -> Exception:
        original = execution.failure.original if execution.failure is not None else None
        if original is not None and is_retryable(original):
            what = f"{execution.error}: {execution.cause}"
            return RetryableError(f"workflow execution {execution.name} failed transiently: {what}")
        return WorkflowFailedError(execution)


class _Lazy:
    """Stands for a client until the first call (no AWS client is built before it is needed)."""

    def __init__(self, owner: WorkflowHandler, service: str) -> None:
        self._owner, self._service = owner, service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner.client(self._service), name)
