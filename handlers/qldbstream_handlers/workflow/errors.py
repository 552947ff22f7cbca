"""Errors in the Amazon States Language sense: a name (``States.TaskFailed``, ``ValueError``) and a cause.

How names match ``ErrorEquals`` (as in Step Functions):

* the error's own name always matches itself;
* ``States.ALL`` matches every error except ``States.Runtime`` (which Retry and Catch never see);
* ``States.TaskFailed`` matches every error raised by a task (a Python callable's exception, a
  service integration's error) except ``States.Timeout``.

A task callable raises :class:`TaskError` to choose its error name; any other exception is named
after its class (``ValueError``), like a Lambda function's ``errorType``.
"""

from __future__ import annotations

from qldbstream.api import ConfigurationError

__all__ = [
    "ALL",
    "BRANCH_FAILED",
    "NO_CHOICE_MATCHED",
    "PARAMETER_PATH_FAILURE",
    "RESULT_PATH_MATCH_FAILURE",
    "RUNTIME",
    "TASK_FAILED",
    "TIMEOUT",
    "DefinitionError",
    "StatesError",
    "TaskError",
    "matches",
]

ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
RUNTIME = "States.Runtime"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
BRANCH_FAILED = "States.BranchFailed"
INTRINSIC_FAILURE = "States.IntrinsicFailure"


class DefinitionError(ConfigurationError):
    """The state machine definition is not valid (or uses something this interpreter lacks)."""


class StatesError(Exception):
    """An error raised while a state runs: ``error`` is its name, ``cause`` the details."""

    def __init__(self, error: str, cause: str = "", *, task: bool = False) -> None:
        super().__init__(f"{error}: {cause}" if cause else error)
        self.error = error
        self.cause = cause
        #: raised by a task (then ``States.TaskFailed`` matches it)
        self.task = task
        #: the original exception of a task callable, if any (for the handler's retry decision)
        self.original: BaseException | None = None

    def as_output(self) -> dict[str, str]:
        """The error output a Catch passes on: ``{"Error": ..., "Cause": ...}``."""
        return {"Error": self.error, "Cause": self.cause}


class TaskError(Exception):
    """Raise from a task callable to fail the task with an error name of your choice."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(f"{error}: {cause}" if cause else error)
        self.error = error
        self.cause = cause


def matches(error: StatesError, names: list[str]) -> bool:
    """Whether ``ErrorEquals`` ``names`` catch ``error``."""
    if error.error == RUNTIME:
        return False
    for name in names:
        if name == error.error or name == ALL:
            return True
        if name == TASK_FAILED and error.task and error.error != TIMEOUT:
            return True
    return False
