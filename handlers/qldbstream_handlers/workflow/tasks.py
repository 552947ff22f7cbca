"""What a ``Task`` state's ``Resource`` runs: Python callables registered by name, or AWS services.

Registration as data, as qldbstream's :class:`~qldbstream.api.router.Router` does it: a decorator that
records the callable and returns it unchanged, backed by an explicit ``add_task``::

    tasks = TaskRegistry()

    @tasks.task("ClassifyEvent")
    def classify(event: dict, ctx: TaskContext) -> dict:
        return {**event, "eventType": "StandardProcessing"}

A resource resolves, in order, to: a callable registered under the exact resource string; for a
Lambda ARN (``arn:aws:lambda:…:function:NAME[:qualifier]``), the callable registered as ``NAME``;
``arn:aws:states:::lambda:invoke`` with ``Parameters.FunctionName`` and ``Payload`` likewise
(the result is ``{"Payload": …, "StatusCode": 200}``); and service integrations
``arn:aws:states:::<service>:<action>`` / ``arn:aws:states:::aws-sdk:<service>:<action>``, called
with boto3 (``sns:publish``, ``dynamodb:putItem``, ``sqs:sendMessage``, …). A resource that
resolves to nothing fails the definition at load time.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from qldbstream_handlers.workflow.errors import DefinitionError, StatesError, TaskError

__all__ = ["ServiceIntegrations", "TaskContext", "TaskFn", "TaskRegistry", "resolve_resource"]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task callable gets besides its input."""

    state: str
    execution_name: str
    #: 0 on the first attempt, then 1, 2, ... on retries (``$$.State.RetryCount``)
    retry_count: int
    #: the context object (``$$``)
    context: Mapping[str, Any] = field(default_factory=dict)


TaskFn = Callable[[Any, TaskContext], Any]
F = TypeVar("F", bound=TaskFn)

_LAMBDA_ARN = re.compile(r"^arn:[\w-]+:lambda:[\w-]*:\d*:function:([\w-]+)(?::[\w$-]+)?$")
_SERVICE = re.compile(r"^arn:[\w-]+:states:::(?:aws-sdk:)?([\w-]+):(\w+)$")
_DISPLAY = {"sns": "SNS", "sqs": "SQS", "dynamodb": "DynamoDB", "lambda": "Lambda"}


class TaskRegistry:
    """Python callables by resource name; ``task(name)`` is the decorator form of ``add_task``."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskFn] = {}

    def add_task(self, resource: str, fn: TaskFn) -> None:
        """Run ``fn(input, ctx)`` for Task states whose Resource is (or names) ``resource``."""
        if not callable(fn):
            raise TypeError(f"task {resource!r}: {fn!r} is not callable")
        if resource in self.tasks:
            raise ValueError(f"task {resource!r} is registered twice")
        self.tasks[resource] = fn

    def task(self, resource: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.add_task(resource, fn)
            return fn

        return register

    def include(self, other: TaskRegistry) -> None:
        """Add every task of ``other``."""
        for resource, fn in other.tasks.items():
            self.add_task(resource, fn)

    def lookup(self, resource: str) -> TaskFn | None:
        fn = self.tasks.get(resource)
        if fn is None:
            m = _LAMBDA_ARN.match(resource)
            if m is not None:
                fn = self.tasks.get(m.group(1))
        return fn


class ServiceIntegrations:
    """Calls ``arn:aws:states:::<service>:<action>`` with a boto3 client from ``clients(service)``."""

    def __init__(self, clients: Callable[[str], Any]) -> None:
        self._factory = clients
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._factory(service)
        return self._clients[service]

    def call(self, service: str, action: str, parameters: Any, *, sdk: bool) -> Any:
        if not isinstance(parameters, dict):
            raise StatesError("States.Runtime", f"{service}:{action} needs Parameters that are an object")
        params = dict(parameters)
        if service == "sns" and action == "publish" and not isinstance(params.get("Message"), str):
            params["Message"] = json.dumps(params.get("Message"))  # as Step Functions does
        method = re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()
        try:
            response = getattr(self.client(service), method)(**params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Error"))
            prefix = service.capitalize() if sdk else _DISPLAY.get(service, service.capitalize())
            error = StatesError(f"{prefix}.{code}", str(exc), task=True)
            error.original = exc
            raise error from exc
        response.pop("ResponseMetadata", None)
        return _jsonable(response)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def resolve_resource(
    resource: str, registry: TaskRegistry, services: ServiceIntegrations | None, where: str
) -> Callable[[Any, TaskContext], Any]:
    """The function a Task state calls with its effective input; raises DefinitionError if none."""
    fn = registry.lookup(resource)
    if fn is not None:
        return _callable(fn)
    m = _SERVICE.match(resource)
    if m is not None and m.group(1) == "lambda" and m.group(2) == "invoke":
        return lambda payload, ctx: _invoke(registry, payload, ctx)
    if m is not None:
        if services is None:
            raise DefinitionError(f"{where}: {resource} needs AWS clients (service integrations are off)")
        service, action, sdk = m.group(1), m.group(2), ":aws-sdk:" in resource
        return lambda params, ctx: services.call(service, action, params, sdk=sdk)
    raise DefinitionError(f"{where}: no task is registered for Resource {resource!r}")


def _callable(fn: TaskFn) -> Callable[[Any, TaskContext], Any]:
    def run(payload: Any, ctx: TaskContext) -> Any:
        try:
            return fn(payload, ctx)
        except TaskError as exc:
            error = StatesError(exc.error, exc.cause, task=True)
            error.original = exc
            raise error from exc
        except StatesError:
            raise
        except Exception as exc:
            error = StatesError(type(exc).__name__, str(exc) or repr(exc), task=True)
            error.original = exc
            raise error from exc

    return run


def _invoke(registry: TaskRegistry, params: Any, ctx: TaskContext) -> Any:
    name = params.get("FunctionName") if isinstance(params, dict) else None
    fn = registry.lookup(str(name)) if name else None
    if fn is None:
        m = _LAMBDA_ARN.match(str(name)) if name else None
        fn = registry.lookup(m.group(1)) if m else None
    if fn is None:
        raise StatesError(
            "Lambda.ResourceNotFoundException", f"no task is registered for {name!r}", task=True
        )
    payload = params.get("Payload")
    return {"Payload": _callable(fn)(payload, ctx), "StatusCode": 200}
