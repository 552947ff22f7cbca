"""Choice rules: the comparison operators of the Amazon States Language, and ``And`` / ``Or`` / ``Not``.

Operators: ``String…``, ``Numeric…`` and ``Timestamp…`` with ``Equals``, ``LessThan``,
``GreaterThan``, ``LessThanEquals``, ``GreaterThanEquals`` (each also as ``…Path``, comparing with
another value of the input), ``StringMatches`` (``*`` wildcards, ``\\*`` a literal star),
``BooleanEquals`` (and ``BooleanEqualsPath``), ``IsNull``, ``IsPresent``, ``IsNumeric``,
``IsString``, ``IsBoolean``, ``IsTimestamp``.

As in Step Functions: values of the wrong type never match (``NumericEquals`` on a string is
false); a ``Variable`` that selects nothing is a ``States.Runtime`` error, except for
``IsPresent``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from qldbstream_handlers.workflow.errors import RUNTIME, DefinitionError, StatesError
from qldbstream_handlers.workflow.paths import Missing, parse_path, select

__all__ = ["COMPARISONS", "evaluate", "validate_rule"]

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "GreaterThan": operator.gt,
    "LessThanEquals": operator.le,
    "GreaterThanEquals": operator.ge,
}
_KINDS = ("String", "Numeric", "Timestamp")
_TESTS = ("IsNull", "IsPresent", "IsNumeric", "IsString", "IsBoolean", "IsTimestamp")

#: Every comparison operator name (without ``…Path``).
COMPARISONS: frozenset[str] = frozenset(
    [f"{k}{o}" for k in _KINDS for o in _ORDER] + ["StringMatches", "BooleanEquals", *_TESTS]
)
_ALL = COMPARISONS | {f"{c}Path" for c in COMPARISONS if c not in _TESTS and c != "StringMatches"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _wildcard(pattern: str, value: str) -> bool:
    parts = re.split(r"(?<!\\)\*", pattern)
    regex = ".*".join(re.escape(p.replace("\\*", "*")) for p in parts)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def validate_rule(rule: Any, where: str, *, top: bool) -> None:
    """Raise :class:`DefinitionError` for a malformed rule (checked when the definition is loaded)."""
    if not isinstance(rule, Mapping):
        raise DefinitionError(f"{where}: a choice rule must be an object")
    if top and "Next" not in rule:
        raise DefinitionError(f"{where}: a choice rule needs Next")
    if not top and "Next" in rule:
        raise DefinitionError(f"{where}: a nested choice rule has no Next")
    for combinator in ("And", "Or"):
        if combinator in rule:
            items = rule[combinator]
            if not isinstance(items, list) or not items:
                raise DefinitionError(f"{where}: {combinator} needs a non-empty list of rules")
            for i, sub in enumerate(items):
                validate_rule(sub, f"{where}.{combinator}[{i}]", top=False)
            return
    if "Not" in rule:
        validate_rule(rule["Not"], f"{where}.Not", top=False)
        return
    ops = [k for k in rule if k in _ALL]
    unknown = set(rule) - _ALL - {"Variable", "Next", "Comment"}
    if len(ops) != 1 or unknown:
        raise DefinitionError(
            f"{where}: a choice rule needs exactly one known operator (got {ops}, unknown {sorted(unknown)})"
        )
    variable = rule.get("Variable")
    try:
        parse_path(variable if isinstance(variable, str) else "")
    except ValueError:
        raise DefinitionError(f"{where}: Variable must be a path, not {variable!r}") from None


def evaluate(rule: Mapping[str, Any], document: Any, context: Any) -> bool:
    """Whether ``rule`` holds for ``document`` (the Choice state's effective input)."""
    if "And" in rule:
        return all(evaluate(r, document, context) for r in rule["And"])
    if "Or" in rule:
        return any(evaluate(r, document, context) for r in rule["Or"])
    if "Not" in rule:
        return not evaluate(rule["Not"], document, context)
    op = next(k for k in rule if k in _ALL)
    expected = rule[op]
    variable = rule["Variable"]
    try:
        actual = _lookup(variable, document, context)
    except Missing:
        if op == "IsPresent":
            return expected is False
        raise StatesError(
            RUNTIME,
            f"Invalid path {variable!r}: the choice state's condition path references an invalid value",
        ) from None
    if op in _TESTS:
        return _test(op, actual) == bool(expected)
    if op.endswith("Path"):
        op = op[: -len("Path")]
        try:
            expected = _lookup(expected, document, context)
        except Missing:
            raise StatesError(RUNTIME, f"Invalid path {rule[op + 'Path']!r} in a choice rule") from None
    return _compare(op, actual, expected)


def _lookup(path: str, document: Any, context: Any) -> Any:
    is_context, steps = parse_path(path)
    return select(context if is_context else document, steps)


def _test(op: str, value: Any) -> bool:
    if op == "IsPresent":
        return True
    if op == "IsNull":
        return value is None
    if op == "IsNumeric":
        return _is_number(value)
    if op == "IsString":
        return isinstance(value, str)
    if op == "IsBoolean":
        return isinstance(value, bool)
    return _timestamp(value) is not None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "BooleanEquals":
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if op == "StringMatches":
        return isinstance(actual, str) and isinstance(expected, str) and _wildcard(expected, actual)
    kind = next(k for k in _KINDS if op.startswith(k))
    compare = _ORDER[op[len(kind) :]]
    if kind == "String":
        return isinstance(actual, str) and isinstance(expected, str) and compare(actual, expected)
    if kind == "Numeric":
        if not (_is_number(actual) and _is_number(expected)):
            return False
        return compare(Decimal(str(actual)), Decimal(str(expected)))
    a, b = _timestamp(actual), _timestamp(expected)
    return a is not None and b is not None and compare(a, b)
