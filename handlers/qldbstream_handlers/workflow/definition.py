"""Loading and validating a state machine definition (Amazon States Language, JSONPath flavour).

:func:`load_definition` reads JSON (a file, a string or a dict), replaces ``${Name}`` placeholders
from ``substitutions`` (what CloudFormation's ``DefinitionSubstitutions`` does) and checks the
whole definition at once, so a bad one fails at start-up with a :class:`DefinitionError` naming
the state and the field - never half-way through an execution.

Supported state types: ``Task``, ``Choice``, ``Parallel``, ``Pass``, ``Wait`` (``Seconds`` /
``SecondsPath``), ``Succeed``, ``Fail``. ``Map``, JSONata and the ``.sync`` /
``.waitForTaskToken`` integration patterns are refused with a clear message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qldbstream_handlers.workflow.choice import validate_rule
from qldbstream_handlers.workflow.errors import ALL, DefinitionError
from qldbstream_handlers.workflow.paths import parse_path

__all__ = ["load_definition", "validate"]

_COMMON = {"Type", "Comment"}
_IO = {"InputPath", "OutputPath"}
_FIELDS: dict[str, set[str]] = {
    "Pass": _COMMON | _IO | {"Next", "End", "ResultPath", "Parameters", "Result"},
    "Task": _COMMON
    | _IO
    | {"Next", "End", "ResultPath", "Parameters", "ResultSelector", "Resource", "Retry", "Catch"}
    | {"TimeoutSeconds", "HeartbeatSeconds"},
    "Choice": _COMMON | _IO | {"Choices", "Default"},
    "Wait": _COMMON | _IO | {"Next", "End", "Seconds", "SecondsPath"},
    "Succeed": _COMMON | _IO,
    "Fail": _COMMON | {"Error", "Cause"},
    "Parallel": _COMMON
    | _IO
    | {"Branches", "Next", "End", "ResultPath", "Parameters", "ResultSelector", "Retry", "Catch"},
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.:-]+)\}")


def load_definition(
    source: str | Path | Mapping[str, Any], substitutions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read, substitute and validate a definition; returns it as a plain dict."""
    if isinstance(source, Mapping):
        raw: Any = json.loads(json.dumps(source))
    else:
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise DefinitionError(f"state machine definition: not valid JSON ({exc})") from None
    definition = _substitute(raw, dict(substitutions or {}))
    validate(definition)
    return definition  # type: ignore[no-any-return]


def _substitute(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            if m.group(1) not in subs:
                raise DefinitionError(f"state machine definition: no substitution for ${{{m.group(1)}}}")
            return subs[m.group(1)]

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, subs) for k, v in value.items()}
    return value


def validate(definition: Any, where: str = "definition") -> None:
    """Check a (sub-)state machine: ``StartAt``, ``States`` and every state in it."""
    if not isinstance(definition, dict):
        raise DefinitionError(f"{where}: must be a JSON object")
    if definition.get("QueryLanguage", "JSONPath") != "JSONPath":
        raise DefinitionError(f"{where}: only the JSONPath query language is supported")
    states = definition.get("States")
    if not isinstance(states, dict) or not states:
        raise DefinitionError(f"{where}: States must be a non-empty object")
    start = definition.get("StartAt")
    if start not in states:
        raise DefinitionError(f"{where}: StartAt {start!r} is not a state")
    for name, state in states.items():
        _state(name, state, states, f"{where}.States.{name}")


def _state(name: str, state: Any, states: Mapping[str, Any], where: str) -> None:
    if not isinstance(state, dict):
        raise DefinitionError(f"{where}: must be a JSON object")
    kind = state.get("Type")
    if kind not in _FIELDS:
        raise DefinitionError(f"{where}: unsupported Type {kind!r} (supported: {', '.join(sorted(_FIELDS))})")
    unknown = set(state) - _FIELDS[kind]
    if unknown:
        raise DefinitionError(f"{where}: unknown or unsupported fields {sorted(unknown)} for a {kind} state")
    if kind in ("Pass", "Task", "Wait", "Parallel"):
        if ("Next" in state) == bool(state.get("End")):
            raise DefinitionError(f"{where}: needs exactly one of Next and End: true")
        _target(state.get("Next"), states, where, "Next")
    for field in ("InputPath", "OutputPath", "ResultPath"):
        if state.get(field) is not None:
            _path(state[field], where, field)
    for field in ("Parameters", "ResultSelector"):
        if field in state:
            _template(state[field], f"{where}.{field}")
    if kind == "Task":
        resource = state.get("Resource")
        if not isinstance(resource, str) or not resource:
            raise DefinitionError(f"{where}: Resource must be a non-empty string")
        if resource.endswith((".sync", ".waitForTaskToken")) or ".sync:" in resource:
            raise DefinitionError(
                f"{where}: the {resource.rsplit('.', 1)[-1]} integration pattern is not supported"
            )
        _positive(state, "TimeoutSeconds", where)
    if kind in ("Task", "Parallel"):
        _retry(state.get("Retry", []), where)
        _catch(state.get("Catch", []), states, where)
    if kind == "Parallel":
        branches = state.get("Branches")
        if not isinstance(branches, list) or not branches:
            raise DefinitionError(f"{where}: Branches must be a non-empty list")
        for i, branch in enumerate(branches):
            validate(branch, f"{where}.Branches[{i}]")
    if kind == "Choice":
        choices = state.get("Choices")
        if not isinstance(choices, list) or not choices:
            raise DefinitionError(f"{where}: Choices must be a non-empty list")
        for i, rule in enumerate(choices):
            validate_rule(rule, f"{where}.Choices[{i}]", top=True)
            _target(rule["Next"], states, f"{where}.Choices[{i}]", "Next")
        if "Default" in state:
            _target(state["Default"], states, where, "Default")
    if kind == "Wait":
        given = [f for f in ("Seconds", "SecondsPath") if f in state]
        if len(given) != 1:
            raise DefinitionError(
                f"{where}: a Wait state needs Seconds or SecondsPath (Timestamp is not supported)"
            )
        if "Seconds" in state:
            _positive(state, "Seconds", where, zero=True)
        else:
            _path(state["SecondsPath"], where, "SecondsPath")
    if kind == "Fail":
        for field in ("Error", "Cause"):
            if field in state and not isinstance(state[field], str):
                raise DefinitionError(f"{where}: {field} must be a string")


def _target(name: Any, states: Mapping[str, Any], where: str, field: str) -> None:
    if name is not None and name not in states:
        raise DefinitionError(f"{where}: {field} {name!r} is not a state of this state machine")


def _path(value: Any, where: str, field: str) -> None:
    try:
        parse_path(value if isinstance(value, str) else "")
    except ValueError:
        raise DefinitionError(f"{where}: {field} {value!r} is not a valid path") from None


def _template(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(".$"):
                if not isinstance(item, str) or not item.startswith(("$", "States.")):
                    raise DefinitionError(f"{where}.{key}: must be a path or an intrinsic function")
                if item.startswith("$"):
                    _path(item, where, key)
            else:
                _template(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _template(item, f"{where}[{i}]")


def _positive(state: Mapping[str, Any], field: str, where: str, *, zero: bool = False) -> None:
    if field in state:
        value = state[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
            raise DefinitionError(
                f"{where}: {field} must be a {'non-negative' if zero else 'positive'} integer"
            )


def _errors(rule: Mapping[str, Any], where: str) -> list[str]:
    names = rule.get("ErrorEquals")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DefinitionError(f"{where}: ErrorEquals must be a non-empty list of error names")
    if ALL in names and len(names) > 1:
        raise DefinitionError(f"{where}: States.ALL must appear alone in ErrorEquals")
    return names


def _retry(retriers: Any, where: str) -> None:
    if not isinstance(retriers, list):
        raise DefinitionError(f"{where}: Retry must be a list")
    known = {
        "ErrorEquals",
        "IntervalSeconds",
        "MaxAttempts",
        "BackoffRate",
        "MaxDelaySeconds",
        "JitterStrategy",
        "Comment",
    }
    for i, r in enumerate(retriers):
        at = f"{where}.Retry[{i}]"
        if not isinstance(r, dict) or set(r) - known:
            raise DefinitionError(f"{at}: a retrier is an object with {sorted(known)}")
        names = _errors(r, at)
        if ALL in names and i != len(retriers) - 1:
            raise DefinitionError(f"{at}: a States.ALL retrier must be the last one")
        _positive(r, "IntervalSeconds", at)
        _positive(r, "MaxAttempts", at, zero=True)
        _positive(r, "MaxDelaySeconds", at)
        rate = r.get("BackoffRate", 2.0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 1.0:
            raise DefinitionError(f"{at}: BackoffRate must be a number >= 1.0")
        if r.get("JitterStrategy", "NONE") not in ("NONE", "FULL"):
            raise DefinitionError(f"{at}: JitterStrategy must be NONE or FULL")


def _catch(catchers: Any, states: Mapping[str, Any], where: str) -> None:
    if not isinstance(catchers, list):
        raise DefinitionError(f"{where}: Catch must be a list")
    for i, c in enumerate(catchers):
        at = f"{where}.Catch[{i}]"
        if not isinstance(c, dict) or set(c) - {"ErrorEquals", "Next", "ResultPath", "Comment"}:
            raise DefinitionError(f"{at}: a catcher is an object with ErrorEquals, Next and ResultPath")
        names = _errors(c, at)
        if ALL in names and i != len(catchers) - 1:
            raise DefinitionError(f"{at}: a States.ALL catcher must be the last one")
        if "Next" not in c:
            raise DefinitionError(f"{at}: a catcher needs Next")
        _target(c["Next"], states, at, "Next")
        if c.get("ResultPath") is not None:
            _path(c["ResultPath"], at, "ResultPath")
