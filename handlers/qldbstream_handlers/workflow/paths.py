"""JSONPath as the Amazon States Language uses it: paths, payload templates, ResultPath, intrinsics.

* **Paths** - ``$`` (the input), ``$.a.b``, ``$['a b']``, ``$.items[0]``, ``$.items[*].id`` and
  ``$$.Execution.Name`` (the context object). A path with ``[*]`` selects a list; the others one
  node. Reference paths (ResultPath) must select one node.
* **Payload templates** (``Parameters``, ``ResultSelector``): a key ending in ``.$`` takes its value
  from a path or an intrinsic function; other values are copied as they are.
* **ResultPath**: the result replaces ``$``, or is put at the path in a copy of the state input
  (missing objects on the way are created); ``null`` discards it.
* **Intrinsic functions**: ``States.Format``, ``States.StringToJson``, ``States.JsonToString``,
  ``States.Array``, ``States.ArrayLength``, ``States.ArrayContains``, ``States.MathAdd``.

Failures raise :class:`~qldbstream_handlers.workflow.errors.StatesError` with the name Step
Functions uses (``States.Runtime`` for InputPath/OutputPath, ``States.ParameterPathFailure``,
``States.ResultPathMatchFailure``, ``States.IntrinsicFailure``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from qldbstream_handlers.workflow.errors import (
    INTRINSIC_FAILURE,
    PARAMETER_PATH_FAILURE,
    RESULT_PATH_MATCH_FAILURE,
    StatesError,
)

__all__ = ["Missing", "apply_path", "apply_result_path", "parse_path", "render_template", "select"]

_STEP = re.compile(
    r"""\.([A-Za-z_$@][\w$@-]*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\["((?:[^"\\]|\\.)*)"\]|\[(\*)\]"""
)
#: A path step: a field name, a list index, or ``*`` (every element).
Step = str | int


class Missing(LookupError):
    """A path that selects nothing in the given document."""


def parse_path(path: str) -> tuple[bool, tuple[Step, ...]]:
    """``(is_context, steps)`` for ``$...`` or ``$$...``; raises ``ValueError`` for anything else."""
    if path.startswith("$$"):
        context, rest = True, path[2:]
    elif path.startswith("$"):
        context, rest = False, path[1:]
    else:
        raise ValueError(f"{path!r} is not a path (paths start with $)")
    steps: list[Step] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None:
            raise ValueError(f"{path!r}: cannot read {rest[pos:]!r}")
        name, index, single, double, star = m.groups()
        if name is not None:
            steps.append(name)
        elif index is not None:
            steps.append(int(index))
        elif star is not None:
            steps.append("*")
        else:
            steps.append(re.sub(r"\\(.)", r"\1", single if single is not None else double))
        pos = m.end()
    return context, tuple(steps)


def select(document: Any, steps: tuple[Step, ...]) -> Any:
    """The node ``steps`` select in ``document``; raises :class:`Missing` when there is none."""
    node = document
    for i, step in enumerate(steps):
        if step == "*":
            if not isinstance(node, list):
                raise Missing(f"[*] applied to a {type(node).__name__}")
            out = []
            for item in node:
                try:
                    out.append(select(item, steps[i + 1 :]))
                except Missing:
                    continue
            return out
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise Missing(f"no element [{step}]")
            node = node[step]
        else:
            if not isinstance(node, Mapping) or step not in node:
                raise Missing(f"no field {step!r}")
            node = node[step]
    return node


def apply_path(path: str | None, document: Any, context: Any, *, what: str, error: str) -> Any:
    """Select ``path`` (``None``: the empty object); a path that selects nothing raises ``error``."""
    if path is None:
        return {}
    try:
        is_context, steps = parse_path(path)
        return select(context if is_context else document, steps)
    except (Missing, ValueError) as exc:
        raise StatesError(error, f"{what} {path!r} could not be applied: {exc}") from None


def apply_result_path(path: str | None, state_input: Any, result: Any) -> Any:
    """Combine the state input and the result as ``ResultPath`` says (see the module docstring)."""
    if path is None:
        return state_input
    try:
        is_context, steps = parse_path(path)
    except ValueError as exc:
        raise StatesError(RESULT_PATH_MATCH_FAILURE, str(exc)) from None
    if is_context or "*" in steps:
        raise StatesError(RESULT_PATH_MATCH_FAILURE, f"ResultPath {path!r} must be a reference path")
    if not steps:
        return result
    if not isinstance(state_input, dict):
        raise StatesError(
            RESULT_PATH_MATCH_FAILURE,
            f"ResultPath {path!r} cannot be applied: the state input is a {type(state_input).__name__}",
        )
    output = copy.deepcopy(state_input)
    node: Any = output
    for step in steps[:-1]:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise StatesError(RESULT_PATH_MATCH_FAILURE, f"ResultPath {path!r}: no element [{step}]")
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise StatesError(RESULT_PATH_MATCH_FAILURE, f"ResultPath {path!r}: {step!r} is not in an object")
        node = node.setdefault(step, {})
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise StatesError(RESULT_PATH_MATCH_FAILURE, f"ResultPath {path!r}: no element [{last}]")
        node[last] = result
    elif isinstance(node, dict):
        node[last] = result
    else:
        raise StatesError(RESULT_PATH_MATCH_FAILURE, f"ResultPath {path!r}: {last!r} is not in an object")
    return output


def render_template(template: Any, document: Any, context: Any) -> Any:
    """Resolve a payload template (``Parameters``, ``ResultSelector``) against the input and context."""
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = _dynamic(key, value, document, context)
            else:
                out[key] = render_template(value, document, context)
        return out
    if isinstance(template, list):
        return [render_template(v, document, context) for v in template]
    return template


def _dynamic(key: str, expression: Any, document: Any, context: Any) -> Any:
    if not isinstance(expression, str):
        raise StatesError(PARAMETER_PATH_FAILURE, f"{key}: the value must be a path or an intrinsic function")
    if expression.startswith("States."):
        return _Intrinsic(expression, document, context).evaluate()
    try:
        is_context, steps = parse_path(expression)
        return copy.deepcopy(select(context if is_context else document, steps))
    except (Missing, ValueError) as exc:
        raise StatesError(
            PARAMETER_PATH_FAILURE, f"the path {expression!r} for {key!r} could not be applied: {exc}"
        ) from None


_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<fn>States\.[A-Za-z]+)\(|(?P<path>\$\$?[^,()\s]*)
    |(?P<lit>null|true|false)|(?P<comma>,)|(?P<close>\)))""",
    re.VERBOSE,
)


class _Intrinsic:
    """A tiny recursive-descent reader and evaluator for intrinsic function calls."""

    def __init__(self, text: str, document: Any, context: Any) -> None:
        self.text, self.document, self.context, self.pos = text, document, context, 0

    def fail(self, why: str) -> StatesError:
        return StatesError(INTRINSIC_FAILURE, f"{self.text!r}: {why}")

    def evaluate(self) -> Any:
        value = self._value()
        if self.text[self.pos :].strip():
            raise self.fail(f"unexpected {self.text[self.pos :]!r}")
        return value

    def _next(self) -> re.Match[str]:
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            raise self.fail(f"cannot read {self.text[self.pos :]!r}")
        self.pos = m.end()
        return m

    def _value(self) -> Any:
        m = self._next()
        kind = m.lastgroup
        if kind == "str":  # \' and \\ are unescaped here, \{ and \} by States.Format
            return re.sub(r"\\(['\\])", r"\1", m.group("str")[1:-1])
        if kind == "num":
            text = m.group("num")
            return float(text) if "." in text else int(text)
        if kind == "lit":
            return {"null": None, "true": True, "false": False}[m.group("lit")]
        if kind == "path":
            try:
                is_context, steps = parse_path(m.group("path"))
                return select(self.context if is_context else self.document, steps)
            except (Missing, ValueError) as exc:
                raise self.fail(f"the path {m.group('path')!r} could not be applied: {exc}") from None
        if kind == "fn":
            return self._call(m.group("fn"))
        raise self.fail(f"unexpected {m.group(0).strip()!r}")

    def _call(self, name: str) -> Any:
        args: list[Any] = []
        if self.text[self.pos :].lstrip().startswith(")"):
            self._next()
        else:
            while True:
                args.append(self._value())
                sep = self._next()
                if sep.lastgroup == "close":
                    break
                if sep.lastgroup != "comma":
                    raise self.fail("expected ',' or ')'")
        return _apply(name, args, self)


def _apply(name: str, args: list[Any], reader: _Intrinsic) -> Any:
    if name == "States.Format":
        if not args or not isinstance(args[0], str):
            raise reader.fail("States.Format needs a template string")
        parts = re.split(r"(?<!\\)\{\}", args[0])
        if len(parts) - 1 != len(args) - 1:
            raise reader.fail("the number of {} does not match the arguments")
        out = parts[0]
        for value, part in zip(args[1:], parts[1:], strict=True):
            out += (value if isinstance(value, str) else json.dumps(value)) + part
        return out.replace("\\{", "{").replace("\\}", "}")
    if name == "States.StringToJson" and len(args) == 1 and isinstance(args[0], str):
        try:
            return json.loads(args[0])
        except ValueError as exc:
            raise reader.fail(str(exc)) from None
    if name == "States.JsonToString" and len(args) == 1:
        return json.dumps(args[0], separators=(",", ":"))
    if name == "States.Array":
        return list(args)
    if name == "States.ArrayLength" and len(args) == 1 and isinstance(args[0], list):
        return len(args[0])
    if name == "States.ArrayContains" and len(args) == 2 and isinstance(args[0], list):
        return args[1] in args[0]
    if name == "States.MathAdd" and len(args) == 2 and all(isinstance(a, int) for a in args):
        return args[0] + args[1]
    raise reader.fail(f"unsupported call {name}({', '.join(map(repr, args))})")
