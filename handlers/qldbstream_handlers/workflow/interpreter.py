"""A local interpreter for Amazon States Language state machines (no I/O of its own).

It follows the Step Functions semantics of the JSONPath flavour:

* **data flow** - ``InputPath`` → ``Parameters`` → the work → ``ResultSelector`` → ``ResultPath``
  (applied to the *raw* state input) → ``OutputPath``; ``Pass`` has ``Result``, ``Choice``/``Wait``/
  ``Succeed`` only the two paths;
* **Retry** - the first retrier whose ``ErrorEquals`` matches decides; attempt *n* (from 0) waits
  ``IntervalSeconds × BackoffRate**n`` seconds, capped by ``MaxDelaySeconds``, randomised with
  ``JitterStrategy: FULL``; each retrier counts its own attempts up to ``MaxAttempts``;
* **Catch** - after the retries, the first catcher that matches sends ``{"Error", "Cause"}``,
  placed in the raw state input by its ``ResultPath`` (default ``$``), to its ``Next``;
* **Parallel** - every branch gets the effective input; the result is the list of branch outputs
  in branch order; a failing branch fails the state with the branch's error. Branches run one
  after another in this interpreter (same results, no threads);
* ``TimeoutSeconds`` of a Task is checked when the callable returns (a Python call cannot be
  interrupted): a late result becomes ``States.Timeout``.

``sleep``, ``clock`` and the jitter's ``rng`` are injected: tests never really wait.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from qldbstream_handlers.workflow.choice import evaluate
from qldbstream_handlers.workflow.definition import load_definition
from qldbstream_handlers.workflow.errors import (
    NO_CHOICE_MATCHED,
    PARAMETER_PATH_FAILURE,
    RUNTIME,
    TIMEOUT,
    StatesError,
    matches,
)
from qldbstream_handlers.workflow.paths import apply_path, apply_result_path, render_template
from qldbstream_handlers.workflow.tasks import (
    ServiceIntegrations,
    TaskContext,
    TaskRegistry,
    resolve_resource,
)

__all__ = ["Execution", "Interpreter"]

Status = Literal["SUCCEEDED", "FAILED"]


@dataclass
class Execution:
    """The outcome of one run: status, output or error, and the history of what happened."""

    name: str
    status: Status
    output: Any = None
    error: str | None = None
    cause: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the error that failed the execution (its ``original`` is a task's own exception)
    failure: StatesError | None = None

    def states_entered(self) -> list[str]:
        return [e["state"] for e in self.history if e["type"] == "StateEntered"]


class _Run:
    """Per-execution bookkeeping: history, transition count, the context object."""

    def __init__(self, name: str, machine_name: str, data: Any, started: float) -> None:
        self.name = name
        self.history: list[dict[str, Any]] = []
        self.transitions = 0
        moment = (
            datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        self.context: dict[str, Any] = {
            "Execution": {
                "Id": f"local:{machine_name}:{name}",
                "Name": name,
                "Input": copy.deepcopy(data),
                "StartTime": moment,
            },
            "StateMachine": {"Id": f"local:{machine_name}", "Name": machine_name},
            "State": {},
        }

    def event(self, kind: str, state: str, **detail: Any) -> None:
        self.history.append({"type": kind, "state": state, **detail})


class Interpreter:
    """Runs one definition (a dict, or JSON text); Task resources are resolved once, when it is built.

    ``registry`` holds the Python task callables, ``services`` calls AWS service integrations
    (without it, a definition that uses one is refused).
    """

    def __init__(
        self,
        definition: Mapping[str, Any] | str,
        registry: TaskRegistry | None = None,
        services: ServiceIntegrations | None = None,
        *,
        name: str = "workflow",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_transitions: int = 25_000,
    ) -> None:
        self.definition = load_definition(definition)
        self.registry = registry or TaskRegistry()
        self.services = services
        self.name = name
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.max_transitions = max_transitions
        self._resources: dict[int, Callable[[Any, TaskContext], Any]] = {}
        self._resolve(self.definition, "definition")

    def _resolve(self, machine: Mapping[str, Any], where: str) -> None:
        for name, state in machine["States"].items():
            if state["Type"] == "Task":
                self._resources[id(state)] = resolve_resource(
                    state["Resource"], self.registry, self.services, f"{where}.States.{name}"
                )
            for i, branch in enumerate(state.get("Branches", [])):
                self._resolve(branch, f"{where}.States.{name}.Branches[{i}]")

    # --- running -------------------------------------------------------------------------
    def run(self, data: Any, *, name: str = "execution") -> Execution:
        """Run to the end; never raises for a failing execution (see ``Execution.status``)."""
        run = _Run(name, self.name, data, self.clock())
        run.event("ExecutionStarted", "", input=copy.deepcopy(data))
        try:
            output = self._machine(self.definition, copy.deepcopy(data), run)
        except StatesError as exc:
            run.event("ExecutionFailed", "", error=exc.error, cause=exc.cause)
            return Execution(name, "FAILED", None, exc.error, exc.cause, run.history, exc)
        run.event("ExecutionSucceeded", "", output=copy.deepcopy(output))
        return Execution(name, "SUCCEEDED", output, history=run.history)

    def _machine(self, machine: Mapping[str, Any], data: Any, run: _Run) -> Any:
        name: str | None = machine["StartAt"]
        while name is not None:
            run.transitions += 1
            if run.transitions > self.max_transitions:
                raise StatesError(RUNTIME, f"more than {self.max_transitions} state transitions")
            current, state = name, machine["States"][name]
            run.context["State"] = {"Name": current, "EnteredTime": self.clock(), "RetryCount": 0}
            run.event("StateEntered", current, input=copy.deepcopy(data))
            name, data = self._state(current, state, data, run)
            run.event("StateExited", current, output=copy.deepcopy(data))
        return data

    def _state(self, name: str, state: Mapping[str, Any], raw: Any, run: _Run) -> tuple[str | None, Any]:
        kind = state["Type"]
        if kind in ("Task", "Parallel"):
            return self._with_retry(name, state, raw, run)
        effective = self._input(state, raw, run)
        if kind == "Pass":
            result = state["Result"] if "Result" in state else self._parameters(state, effective, run)
            return state.get("Next"), self._output(
                state, apply_result_path(state.get("ResultPath", "$"), raw, result), run
            )
        if kind == "Choice":
            for rule in state["Choices"]:
                if evaluate(rule, effective, run.context):
                    return rule["Next"], self._output(state, effective, run)
            if "Default" in state:
                return state["Default"], self._output(state, effective, run)
            raise StatesError(NO_CHOICE_MATCHED, f"no choice rule of {name} matched and it has no Default")
        if kind == "Wait":
            seconds = state.get("Seconds")
            if seconds is None:
                seconds = apply_path(
                    state["SecondsPath"], effective, run.context, what="SecondsPath", error=RUNTIME
                )
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise StatesError(RUNTIME, f"{name}: the wait time {seconds!r} is not a non-negative number")
            self.sleep(float(seconds))
            return state.get("Next"), self._output(state, effective, run)
        if kind == "Succeed":
            return None, self._output(state, effective, run)
        # Fail
        raise StatesError(state.get("Error", ""), state.get("Cause", ""))

    def _with_retry(self, name: str, state: Mapping[str, Any], raw: Any, run: _Run) -> tuple[str | None, Any]:
        counts: dict[int, int] = {}
        retries = 0
        while True:
            run.context["State"]["RetryCount"] = retries
            try:
                effective = self._parameters(state, self._input(state, raw, run), run)
                result = self._work(name, state, effective, run, retries)
                if "ResultSelector" in state:
                    result = self._template(state["ResultSelector"], result, run)
                output = apply_result_path(state.get("ResultPath", "$"), raw, result)
                return state.get("Next"), self._output(state, output, run)
            except StatesError as error:
                run.event("StateFailed", name, error=error.error, cause=error.cause)
                delay = self._retry_delay(state.get("Retry", []), error, counts)
                if delay is not None:
                    retries += 1
                    run.event("Retry", name, error=error.error, attempt=retries, delay=delay)
                    self.sleep(delay)
                    continue
                for catcher in state.get("Catch", []):
                    if matches(error, catcher["ErrorEquals"]):
                        run.event("Caught", name, error=error.error, next=catcher["Next"])
                        out = apply_result_path(catcher.get("ResultPath", "$"), raw, error.as_output())
                        return catcher["Next"], out
                raise

    def _retry_delay(
        self, retriers: list[Mapping[str, Any]], error: StatesError, counts: dict[int, int]
    ) -> float | None:
        for i, retrier in enumerate(retriers):
            if not matches(error, retrier["ErrorEquals"]):
                continue
            attempt = counts.get(i, 0)
            if attempt >= retrier.get("MaxAttempts", 3):
                return None
            counts[i] = attempt + 1
            delay = retrier.get("IntervalSeconds", 1) * retrier.get("BackoffRate", 2.0) ** attempt
            if "MaxDelaySeconds" in retrier:
                delay = min(delay, retrier["MaxDelaySeconds"])
            if retrier.get("JitterStrategy") == "FULL":
                delay = self.rng.uniform(0, delay)
            return float(delay)
        return None

    def _work(self, name: str, state: Mapping[str, Any], effective: Any, run: _Run, retries: int) -> Any:
        if state["Type"] == "Parallel":
            results = []
            for branch in state["Branches"]:
                saved = dict(run.context["State"])
                results.append(self._machine(branch, copy.deepcopy(effective), run))
                run.context["State"] = saved
            return results
        ctx = TaskContext(name, run.name, retries, copy.deepcopy(run.context))
        started = self.clock()
        result = self._resources[id(state)](effective, ctx)
        timeout = state.get("TimeoutSeconds")
        if timeout is not None and self.clock() - started > timeout:
            raise StatesError(TIMEOUT, f"{name} took longer than {timeout} s", task=True)
        run.event("TaskSucceeded", name)
        return copy.deepcopy(result)

    # --- data flow -----------------------------------------------------------------------
    def _input(self, state: Mapping[str, Any], raw: Any, run: _Run) -> Any:
        return apply_path(state.get("InputPath", "$"), raw, run.context, what="InputPath", error=RUNTIME)

    def _output(self, state: Mapping[str, Any], data: Any, run: _Run) -> Any:
        return apply_path(state.get("OutputPath", "$"), data, run.context, what="OutputPath", error=RUNTIME)

    def _parameters(self, state: Mapping[str, Any], effective: Any, run: _Run) -> Any:
        return self._template(state["Parameters"], effective, run) if "Parameters" in state else effective

    def _template(self, template: Any, document: Any, run: _Run) -> Any:
        try:
            return render_template(template, document, run.context)
        except StatesError:
            raise
        except Exception as exc:  # a template that cannot be rendered at all
            raise StatesError(PARAMETER_PATH_FAILURE, repr(exc)) from exc
