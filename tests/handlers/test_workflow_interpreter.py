"""The Amazon States Language interpreter: every state type, JSONPath data flow, Retry and Catch,
checked against the Step Functions semantics. Time is injected; nothing really sleeps."""

from __future__ import annotations

import random
from typing import Any

import pytest
from qldbstream_handlers.workflow import (
    DefinitionError,
    Interpreter,
    TaskContext,
    TaskError,
    TaskRegistry,
    load_definition,
)

from tests.support.fakes import FakeTime

#: the fake clock's start (epoch seconds)
T0 = 1_700_000_000.0


def machine(states: dict[str, Any], start: str | None = None) -> dict[str, Any]:
    return {"StartAt": start or next(iter(states)), "States": states}


def run(definition: dict[str, Any], data: Any, registry: TaskRegistry | None = None, **kw: Any) -> Any:
    t = kw.pop("time", FakeTime(T0))
    return Interpreter(definition, registry, sleep=t.sleep, clock=t.clock, **kw).run(data, name="exec-1")


# -- Pass and the JSONPath data flow -------------------------------------------------------------


def test_pass_result_path_merges_into_the_raw_input() -> None:
    d = machine({"P": {"Type": "Pass", "Result": {"x": 1}, "ResultPath": "$.added.deep", "End": True}})
    ex = run(d, {"keep": True, "added": {"other": 2}})
    assert ex.status == "SUCCEEDED"
    assert ex.output == {"keep": True, "added": {"other": 2, "deep": {"x": 1}}}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"a": {"b": 1}, "c": [10, 20]}),  # no Result: the effective input is the result, at $
        ({"InputPath": "$.a"}, {"b": 1}),
        ({"InputPath": "$.a", "ResultPath": "$.copy"}, {"a": {"b": 1}, "c": [10, 20], "copy": {"b": 1}}),
        ({"ResultPath": None, "Result": "ignored"}, {"a": {"b": 1}, "c": [10, 20]}),
        ({"OutputPath": "$.c[1]"}, 20),
        ({"InputPath": None}, {}),
        ({"OutputPath": None}, {}),
        (
            {"Parameters": {"first.$": "$.c[0]", "name.$": "$$.Execution.Name", "lit": {"n": 1}}},
            {"first": 10, "name": "exec-1", "lit": {"n": 1}},
        ),
        ({"Parameters": {"all.$": "$.c[*]", "quoted.$": "$['a']['b']"}}, {"all": [10, 20], "quoted": 1}),
    ],
)
def test_pass_paths_and_parameters(fields: dict[str, Any], expected: Any) -> None:
    d = machine({"P": {"Type": "Pass", "End": True, **fields}})
    ex = run(d, {"a": {"b": 1}, "c": [10, 20]})
    assert ex.status == "SUCCEEDED" and ex.output == expected


def test_a_path_that_selects_nothing_fails_the_execution_with_the_step_functions_error() -> None:
    for fields, error in (
        ({"InputPath": "$.missing"}, "States.Runtime"),
        ({"Parameters": {"x.$": "$.missing"}}, "States.ParameterPathFailure"),
    ):
        ex = run(machine({"P": {"Type": "Pass", "End": True, **fields}}), {"a": 1})
        assert ex.status == "FAILED" and ex.error == error


def test_intrinsic_functions() -> None:
    params = {
        "msg.$": "States.Format('Account {} moved {} (\\'{}\\')', $.account, $.amount, $.kind)",
        "parsed.$": "States.StringToJson($.json)",
        "text.$": "States.JsonToString($.obj)",
        "arr.$": "States.Array($.amount, 'x', null)",
        "len.$": "States.ArrayLength($.list)",
        "has.$": "States.ArrayContains($.list, 2)",
        "sum.$": "States.MathAdd($.n, -3)",
    }
    data = {
        "account": "AC1",
        "amount": 12.5,
        "kind": "wire",
        "json": '{"k": [1]}',
        "obj": {"a": 1},
        "list": [1, 2],
        "n": 5,
    }
    ex = run(machine({"P": {"Type": "Pass", "Parameters": params, "End": True}}), data)
    assert ex.output == {
        "msg": "Account AC1 moved 12.5 ('wire')",
        "parsed": {"k": [1]},
        "text": '{"a":1}',
        "arr": [12.5, "x", None],
        "len": 2,
        "has": True,
        "sum": 2,
    }


# -- Task ------------------------------------------------------------------------------------------


def test_task_runs_a_registered_callable_with_parameters_result_selector_and_result_path() -> None:
    tasks = TaskRegistry()
    seen: list[tuple[Any, TaskContext]] = []

    @tasks.task("Score")
    def score(event: Any, ctx: TaskContext) -> dict[str, Any]:
        seen.append((event, ctx))
        return {"score": event["amount"] * 2, "noise": "x"}

    d = machine(
        {
            "T": {
                "Type": "Task",
                "Resource": "arn:aws:lambda:us-east-1:123456789012:function:Score:live",
                "Parameters": {"amount.$": "$.tx.amount"},
                "ResultSelector": {"value.$": "$.score"},
                "ResultPath": "$.result",
                "Next": "Invoke",
            },
            "Invoke": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "Score", "Payload": {"amount.$": "$.result.value"}},
                "OutputPath": "$.Payload.score",
                "End": True,
            },
        }
    )
    ex = run(d, {"tx": {"amount": 21}}, tasks)
    assert ex.status == "SUCCEEDED" and ex.output == 84
    assert seen[0][0] == {"amount": 21} and seen[0][1].state == "T" and seen[0][1].execution_name == "exec-1"
    assert seen[0][1].context["Execution"]["Input"] == {"tx": {"amount": 21}}
    assert ex.states_entered() == ["T", "Invoke"]


# -- Choice ----------------------------------------------------------------------------------------

DOC = {
    "type": "Wire",
    "amount": 12000,
    "score": 0.85,
    "flag": True,
    "nothing": None,
    "when": "2024-03-01T09:00:00Z",
    "limit": 10000,
}


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        ({"Variable": "$.type", "StringEquals": "Wire"}, True),
        ({"Variable": "$.type", "StringEquals": "wire"}, False),
        ({"Variable": "$.score", "NumericGreaterThan": 0.8}, True),
        ({"Variable": "$.score", "NumericGreaterThan": 0.85}, False),
        ({"Variable": "$.amount", "NumericLessThan": 10000}, False),
        ({"Variable": "$.amount", "NumericGreaterThanEqualsPath": "$.limit"}, True),
        ({"Variable": "$.type", "NumericEquals": 1}, False),  # the wrong type never matches
        ({"Variable": "$.flag", "BooleanEquals": True}, True),
        ({"Variable": "$.type", "StringMatches": "W*e"}, True),
        ({"Variable": "$.type", "StringMatches": "W\\*"}, False),
        ({"Variable": "$.when", "TimestampLessThan": "2024-03-01T10:00:00+00:00"}, True),
        ({"Variable": "$.nothing", "IsNull": True}, True),
        ({"Variable": "$.absent", "IsPresent": False}, True),
        ({"Variable": "$.amount", "IsPresent": True}, True),
        ({"Variable": "$.amount", "IsNumeric": True}, True),
        ({"Variable": "$.flag", "IsNumeric": True}, False),
        ({"Variable": "$.when", "IsTimestamp": True}, True),
        (
            {
                "And": [
                    {"Variable": "$.flag", "BooleanEquals": True},
                    {"Variable": "$.amount", "NumericGreaterThan": 1},
                ]
            },
            True,
        ),
        (
            {
                "Or": [
                    {"Variable": "$.flag", "BooleanEquals": False},
                    {"Variable": "$.type", "IsString": True},
                ]
            },
            True,
        ),
        ({"Not": {"Variable": "$.type", "StringEquals": "Wire"}}, False),
    ],
)
def test_choice_rules(rule: dict[str, Any], holds: bool) -> None:
    d = machine(
        {
            "C": {"Type": "Choice", "Choices": [{**rule, "Next": "Yes"}], "Default": "No"},
            "Yes": {"Type": "Pass", "Result": "yes", "End": True},
            "No": {"Type": "Pass", "Result": "no", "End": True},
        }
    )
    assert run(d, DOC).output == ("yes" if holds else "no")


def test_choice_without_a_match_or_with_a_missing_variable_fails() -> None:
    no_default = machine(
        {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.a", "StringEquals": "x", "Next": "E"}]},
            "E": {"Type": "Succeed"},
        }
    )
    ex = run(no_default, {"a": "y"})
    assert (ex.status, ex.error) == ("FAILED", "States.NoChoiceMatched")
    ex = run(no_default, {"b": 1})
    assert (ex.status, ex.error) == ("FAILED", "States.Runtime")


# -- Parallel --------------------------------------------------------------------------------------


def branch(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"StartAt": name, "States": {name: {**state, "End": True}}}


def test_parallel_gives_each_branch_the_input_and_collects_results_in_branch_order() -> None:
    tasks = TaskRegistry()
    tasks.add_task("Double", lambda e, ctx: e["n"] * 2)
    d = machine(
        {
            "Par": {
                "Type": "Parallel",
                "Branches": [
                    branch("A", {"Type": "Task", "Resource": "Double"}),
                    branch("B", {"Type": "Pass", "InputPath": "$.n"}),
                ],
                "ResultPath": "$.results",
                "Next": "Done",
            },
            "Done": {"Type": "Succeed"},
        }
    )
    ex = run(d, {"n": 4}, tasks)
    assert ex.output == {"n": 4, "results": [8, 4]}


def test_a_failing_branch_fails_the_parallel_state_and_catch_sees_its_error() -> None:
    d = machine(
        {
            "Par": {
                "Type": "Parallel",
                "Branches": [
                    branch("Ok", {"Type": "Pass"}),
                    {
                        "StartAt": "Boom",
                        "States": {"Boom": {"Type": "Fail", "Error": "Risk.Unknown", "Cause": "no data"}},
                    },
                ],
                "Catch": [{"ErrorEquals": ["Risk.Unknown"], "ResultPath": "$.failure", "Next": "Fallback"}],
                "Next": "Done",
            },
            "Fallback": {"Type": "Pass", "End": True},
            "Done": {"Type": "Succeed"},
        }
    )
    ex = run(d, {"n": 1})
    assert ex.status == "SUCCEEDED"
    assert ex.output == {"n": 1, "failure": {"Error": "Risk.Unknown", "Cause": "no data"}}


# -- Retry and Catch -------------------------------------------------------------------------------


def flaky(failures: int, error: Exception) -> tuple[TaskRegistry, list[int]]:
    calls: list[int] = []
    tasks = TaskRegistry()

    @tasks.task("Flaky")
    def fn(event: Any, ctx: TaskContext) -> Any:
        calls.append(ctx.retry_count)
        if len(calls) <= failures:
            raise error
        return {"ok": True}

    return tasks, calls


def task_with(
    retry: list[dict[str, Any]] | None = None, catch: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", "Resource": "Flaky", "Next": "Done"}
    if retry is not None:
        state["Retry"] = retry
    if catch is not None:
        state["Catch"] = catch
    return machine({"T": state, "Done": {"Type": "Succeed"}, "Handle": {"Type": "Pass", "End": True}})


def test_retry_backs_off_exponentially_then_succeeds() -> None:
    tasks, calls = flaky(3, ValueError("not yet"))
    t = FakeTime(T0)
    retry = [{"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 2, "MaxAttempts": 3, "BackoffRate": 2}]
    ex = run(task_with(retry), {}, tasks, time=t)
    assert ex.status == "SUCCEEDED" and t.slept == [2, 4, 8] and calls == [0, 1, 2, 3]
    assert [e["delay"] for e in ex.history if e["type"] == "Retry"] == [2, 4, 8]


def test_retry_gives_up_after_max_attempts_and_the_error_reaches_the_caller() -> None:
    tasks, calls = flaky(10, ValueError("never"))
    t = FakeTime(T0)
    retry = [
        {
            "ErrorEquals": ["ValueError"],
            "IntervalSeconds": 1,
            "MaxAttempts": 2,
            "BackoffRate": 3,
            "MaxDelaySeconds": 2,
        }
    ]
    ex = run(task_with(retry), {}, tasks, time=t)
    assert (ex.status, ex.error, ex.cause) == ("FAILED", "ValueError", "never")
    assert t.slept == [1, 2] and len(calls) == 3  # 3 s capped at MaxDelaySeconds 2
    assert isinstance(ex.failure.original if ex.failure else None, ValueError)


def test_each_retrier_counts_its_own_attempts_and_only_the_first_match_applies() -> None:
    tasks = TaskRegistry()
    errors = iter([TaskError("A"), TaskError("B"), TaskError("A"), TaskError("A")])

    @tasks.task("Flaky")
    def fn(event: Any, ctx: TaskContext) -> Any:
        raise next(errors)

    t = FakeTime(T0)
    retry = [
        {"ErrorEquals": ["A"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1},
        {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 5, "MaxAttempts": 1},
    ]
    ex = run(task_with(retry), {}, tasks, time=t)
    assert ex.error == "A" and t.slept == [1, 5, 1]


def test_max_attempts_zero_never_retries_and_jitter_stays_below_the_interval() -> None:
    tasks, calls = flaky(1, ValueError("x"))
    ex = run(task_with([{"ErrorEquals": ["States.ALL"], "MaxAttempts": 0}]), {}, tasks)
    assert ex.status == "FAILED" and calls == [0]
    tasks, calls = flaky(2, ValueError("x"))
    t = FakeTime(T0)
    retry = [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 10, "JitterStrategy": "FULL"}]
    ex = run(task_with(retry), {}, tasks, time=t, rng=random.Random(7))
    assert ex.status == "SUCCEEDED" and len(t.slept) == 2
    assert 0 <= t.slept[0] <= 10 and 0 <= t.slept[1] <= 20


def test_catch_puts_the_error_at_its_result_path_in_the_raw_input() -> None:
    tasks, _ = flaky(5, KeyError("accountId"))
    catch = [{"ErrorEquals": ["KeyError"], "ResultPath": "$.error", "Next": "Handle"}]
    ex = run(task_with(None, catch), {"tx": 1}, tasks)
    assert ex.status == "SUCCEEDED"
    assert ex.output == {"tx": 1, "error": {"Error": "KeyError", "Cause": "'accountId'"}}
    assert ex.states_entered() == ["T", "Handle"]
    # without a ResultPath the error output replaces the input
    ex = run(task_with(None, [{"ErrorEquals": ["States.ALL"], "Next": "Handle"}]), {"tx": 1}, tasks)
    assert ex.output == {"Error": "KeyError", "Cause": "'accountId'"}


def test_task_failed_does_not_match_a_timeout_but_states_all_does() -> None:
    t = FakeTime(T0)
    tasks = TaskRegistry()

    @tasks.task("Flaky")
    def slow(event: Any, ctx: TaskContext) -> Any:
        t.now += 5
        return {}

    d = task_with(None, [{"ErrorEquals": ["States.TaskFailed"], "Next": "Handle"}])
    d["States"]["T"]["TimeoutSeconds"] = 2
    ex = run(d, {}, tasks, time=t)
    assert (ex.status, ex.error) == ("FAILED", "States.Timeout")
    d["States"]["T"]["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.e", "Next": "Handle"}]
    assert run(d, {}, tasks, time=t).output == {
        "e": {"Error": "States.Timeout", "Cause": "T took longer than 2 s"}
    }


def test_runtime_errors_are_never_caught() -> None:
    d = machine(
        {
            "T": {"Type": "Pass", "OutputPath": "$.missing", "Next": "Done"},
            "Done": {"Type": "Succeed"},
        }
    )
    ex = run(d, {})
    assert (ex.status, ex.error) == ("FAILED", "States.Runtime")


# -- Fail, Succeed, Wait -------------------------------------------------------------------------


def test_fail_succeed_and_wait() -> None:
    t = FakeTime(T0)
    d = machine(
        {
            "W1": {"Type": "Wait", "Seconds": 3, "Next": "W2"},
            "W2": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "C"},
            "C": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.ok", "BooleanEquals": True, "Next": "S"}],
                "Default": "F",
            },
            "S": {"Type": "Succeed", "OutputPath": "$.delay"},
            "F": {"Type": "Fail", "Error": "Compliance.Rejected", "Cause": "not ok"},
        }
    )
    assert run(d, {"ok": True, "delay": 4}, time=t).output == 4 and t.slept == [3, 4]
    ex = run(d, {"ok": False, "delay": 0})
    assert (ex.status, ex.error, ex.cause) == ("FAILED", "Compliance.Rejected", "not ok")


def test_a_loop_is_stopped_by_the_transition_limit() -> None:
    d = machine({"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "Next": "A"}})
    ex = run(d, {}, max_transitions=50)
    assert (ex.status, ex.error) == ("FAILED", "States.Runtime")


# -- definitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"StartAt": "X", "States": {"A": {"Type": "Succeed"}}}, "StartAt 'X' is not a state"),
        (machine({"A": {"Type": "Pass", "Next": "Nowhere"}}), "Next 'Nowhere' is not a state"),
        (machine({"A": {"Type": "Pass"}}), "exactly one of Next and End"),
        (machine({"A": {"Type": "Map", "End": True}}), "unsupported Type 'Map'"),
        (
            machine({"A": {"Type": "Pass", "End": True, "Arguments": {}}}),
            r"unknown or unsupported fields \['Arguments'\]",
        ),
        (machine({"A": {"Type": "Task", "Resource": "Nobody", "End": True}}), "no task is registered"),
        (
            machine({"A": {"Type": "Task", "Resource": "arn:aws:states:::ecs:runTask.sync", "End": True}}),
            "sync integration",
        ),
        (
            machine(
                {
                    "A": {
                        "Type": "Task",
                        "Resource": "R",
                        "End": True,
                        "Retry": [{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}],
                    }
                }
            ),
            "must be the last",
        ),
        (
            machine(
                {
                    "A": {
                        "Type": "Task",
                        "Resource": "R",
                        "End": True,
                        "Retry": [{"ErrorEquals": ["X"], "BackoffRate": 0.5}],
                    }
                }
            ),
            "BackoffRate",
        ),
        (
            machine({"A": {"Type": "Choice", "Choices": [{"Variable": "$.a", "Next": "A"}]}}),
            "exactly one known operator",
        ),
        (machine({"A": {"Type": "Pass", "End": True, "Parameters": {"x.$": "nope"}}}), "must be a path"),
        (
            {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}, "QueryLanguage": "JSONata"},
            "JSONPath",
        ),
    ],
)
def test_invalid_definitions_fail_when_loaded(definition: dict[str, Any], message: str) -> None:
    tasks = TaskRegistry()
    tasks.add_task("R", lambda e, c: e)
    with pytest.raises(DefinitionError, match=message):
        Interpreter(definition, tasks)


def test_substitutions_fill_placeholders_and_a_missing_one_is_an_error() -> None:
    text = '{"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": "${Topic}", "End": True}}}'.replace(
        "True", "true"
    )
    assert load_definition(text, {"Topic": "arn:t"})["States"]["A"]["Result"] == "arn:t"
    with pytest.raises(DefinitionError, match="no substitution for"):
        load_definition(text)
