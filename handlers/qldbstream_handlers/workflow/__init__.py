"""The ``workflow`` handler: event workflows in the Amazon States Language, run for verified revisions.

A local interpreter (:class:`Interpreter`) runs Task, Choice, Parallel, Pass, Wait, Succeed and Fail
states with JSONPath data flow, Retry and Catch; Task resources are Python callables registered on
a :class:`TaskRegistry`, or AWS service integrations (``sns:publish``, ``dynamodb:putItem``, …)
called with boto3. Or the handler starts real Step Functions executions, named after the revision
for idempotency. See ``docs/handlers/workflow.md``.
"""

from qldbstream_handlers.workflow.definition import load_definition
from qldbstream_handlers.workflow.errors import DefinitionError, StatesError, TaskError
from qldbstream_handlers.workflow.events import AlertBook, alert_event, execution_name, revision_event
from qldbstream_handlers.workflow.executions import (
    DoneMarkers,
    DynamoDBDoneMarkers,
    InMemoryDoneMarkers,
    StepFunctionsStarter,
)
from qldbstream_handlers.workflow.handler import WorkflowFailedError, WorkflowHandler
from qldbstream_handlers.workflow.interpreter import Execution, Interpreter
from qldbstream_handlers.workflow.settings import WorkflowSettings
from qldbstream_handlers.workflow.tasks import ServiceIntegrations, TaskContext, TaskRegistry

__all__ = [
    "AlertBook",
    "DefinitionError",
    "DoneMarkers",
    "DynamoDBDoneMarkers",
    "Execution",
    "InMemoryDoneMarkers",
    "Interpreter",
    "ServiceIntegrations",
    "StatesError",
    "StepFunctionsStarter",
    "TaskContext",
    "TaskError",
    "TaskRegistry",
    "WorkflowFailedError",
    "WorkflowHandler",
    "WorkflowSettings",
    "alert_event",
    "execution_name",
    "load_definition",
    "revision_event",
]
