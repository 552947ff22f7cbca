"""Idempotency of executions: done markers for the local interpreter, names for Step Functions.

**Local mode.** Before running an execution the handler asks its :class:`DoneMarkers` whether the
execution name (``<documentId>-<version>`` or ``alert-<alertId>``) already finished, and marks it
after the run. Markers live in memory (one process) or in a DynamoDB table (partition key
``executionName``, a string) shared by every worker. A crash between the end of a run and its
marker re-runs the execution on redelivery: tasks with side effects should be idempotent too (a
``dynamodb:putItem`` keyed by the event id is; an SNS message is not, and carries the event id).

**Remote mode.** :class:`StepFunctionsStarter` starts an execution *named* after the event. Step
Functions keeps names unique per state machine (90 days after an execution closes), so a
redelivered event is refused with ``ExecutionAlreadyExists`` - which means "already started",
and is counted as such - or, while the first one still runs with the same input, answered with
the same execution (the input is serialised canonically, so it is the same).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, Protocol

from botocore.exceptions import ClientError

from qldbstream.api import HaltShardError, PoisonRecordError, RetryableError
from qldbstream.api.aws import is_retryable

__all__ = ["DoneMarkers", "DynamoDBDoneMarkers", "InMemoryDoneMarkers", "StepFunctionsStarter"]


class DoneMarkers(Protocol):
    def is_done(self, name: str) -> bool: ...

    def mark_done(self, name: str, status: str) -> None: ...


class InMemoryDoneMarkers:
    """The last ``size`` execution names that finished, in this process."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self.marks: OrderedDict[str, str] = OrderedDict()

    def is_done(self, name: str) -> bool:
        return name in self.marks

    def mark_done(self, name: str, status: str) -> None:
        self.marks[name] = status
        while len(self.marks) > self.size:
            self.marks.popitem(last=False)


class DynamoDBDoneMarkers:
    """Markers in a DynamoDB table (partition key ``executionName``), with a TTL attribute ``expiresAt``."""

    def __init__(
        self, client: Any, table: str, *, ttl: float = 90 * 86400.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.client, self.table, self.ttl, self.clock = client, table, ttl, clock

    def is_done(self, name: str) -> bool:
        item = self.client.get_item(
            TableName=self.table, Key={"executionName": {"S": name}}, ConsistentRead=True
        ).get("Item")
        return item is not None

    def mark_done(self, name: str, status: str) -> None:
        now = self.clock()
        self.client.put_item(
            TableName=self.table,
            Item={
                "executionName": {"S": name},
                "status": {"S": status},
                "doneAt": {"N": str(int(now))},
                "expiresAt": {"N": str(int(now + self.ttl))},
            },
        )


Started = Literal["started", "already-started"]


class StepFunctionsStarter:
    """Starts named executions of one state machine; see the module docstring."""

    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self.client = client
        self.state_machine_arn = state_machine_arn

    def execution_arn(self, name: str) -> str:
        return self.state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"

    def start(self, name: str, event: Any) -> Started:
        """Start ``name``; raises an error class that says what the pipeline does next."""
        payload = json.dumps(event, sort_keys=True, separators=(",", ":"))
        try:
            self.client.start_execution(stateMachineArn=self.state_machine_arn, name=name, input=payload)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ExecutionAlreadyExists":
                return "already-started"
            if code in ("InvalidExecutionInput", "InvalidName"):
                raise PoisonRecordError(f"Step Functions refused execution {name}: {exc}") from exc
            if is_retryable(exc) or code == "ExecutionLimitExceeded":
                raise RetryableError(f"Step Functions: {exc}") from exc
            raise HaltShardError(f"cannot start executions of {self.state_machine_arn}: {exc}") from exc
        except Exception as exc:
            if is_retryable(exc):
                raise RetryableError(f"Step Functions: {exc!r}") from exc
            raise
        return "started"

    def describe(self, name: str) -> dict[str, Any]:
        """``DescribeExecution`` of the execution named ``name``."""
        response: dict[str, Any] = self.client.describe_execution(executionArn=self.execution_arn(name))
        response.pop("ResponseMetadata", None)
        return response
