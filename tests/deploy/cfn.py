"""Evaluate a CloudFormation template offline for one set of parameter values, and read its IAM grants.

:func:`evaluate` resolves what CloudFormation would resolve before it creates anything: parameters
(defaults, ``CommaDelimitedList``), pseudo parameters (fixed test values), ``Conditions`` and the
intrinsic functions (``Ref``, ``Fn::If``, ``Fn::Sub``, ``Fn::Join``, ``Fn::Select``, ``Fn::Split``,
``Fn::FindInMap``, ``Fn::GetAtt``). A resource whose condition is false disappears, as does every
``AWS::NoValue``. What only exists once deployed stays a token: ``Ref`` of a resource is
``Ref:<LogicalId>``, ``Fn::GetAtt`` is ``GetAtt:<LogicalId>.<Attribute>``.

:func:`grants` flattens a role's policies (inline ones and the template's own managed policies) to
:class:`Grant` triples - one per action and resource - which is what ``tests/deploy/test_iam.py``
compares with what the code calls.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

__all__ = [
    "PSEUDO",
    "TEMPLATES",
    "Evaluated",
    "Grant",
    "evaluate",
    "failed_rules",
    "grants",
    "load",
    "statements",
]

TEMPLATES = Path(__file__).resolve().parents[2] / "deploy" / "cloudformation"

PSEUDO = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "eu-west-1",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "teststack",
    "AWS::StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/teststack/1",
}


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


def load(name: str | Path) -> dict[str, Any]:
    """A template from ``deploy/cloudformation`` (or a path) as plain dicts, intrinsics in long form."""
    path = Path(name) if Path(name).is_absolute() else TEMPLATES / name
    return _plain(cfn_yaml.load(str(path)))


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


@dataclass(frozen=True)
class Evaluated:
    """A template as deployed with ``parameters``: conditions decided, intrinsics resolved."""

    parameters: dict[str, Any]
    conditions: dict[str, bool]
    resources: dict[str, dict[str, Any]]
    outputs: dict[str, Any]

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == type_}


def evaluate(template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> Evaluated:
    """Resolve ``template`` for ``parameters`` (the others take their defaults; a missing one raises)."""
    values: dict[str, Any] = {}
    given = dict(parameters or {})
    for name, spec in template.get("Parameters", {}).items():
        if name in given:
            raw = given.pop(name)
        elif "Default" in spec:
            raw = spec["Default"]
        else:
            raise KeyError(f"parameter {name} has no default and no value")
        if spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<"):
            raw = raw if isinstance(raw, list) else [p.strip() for p in str(raw).split(",")]
        elif not isinstance(raw, str):
            raw = str(raw)
        if "AllowedValues" in spec and str(raw) not in [str(v) for v in spec["AllowedValues"]]:
            raise ValueError(f"parameter {name}: {raw!r} is not one of {spec['AllowedValues']}")
        values[name] = raw
    if given:
        raise KeyError(f"unknown parameters {sorted(given)}")
    resolver = _Resolver(template, values)
    conditions = {name: resolver.condition(name) for name in template.get("Conditions", {})}
    resources: dict[str, dict[str, Any]] = {}
    for name, resource in template.get("Resources", {}).items():
        if "Condition" in resource and not conditions[resource["Condition"]]:
            continue
        body = {k: v for k, v in resource.items() if k not in ("Condition",)}
        resources[name] = resolver.resolve(copy.deepcopy(body))
    outputs: dict[str, Any] = {}
    for name, output in template.get("Outputs", {}).items():
        if "Condition" in output and not conditions[output["Condition"]]:
            continue
        outputs[name] = resolver.resolve(copy.deepcopy(output["Value"]))
    return Evaluated(values, conditions, resources, outputs)


class _Resolver:
    def __init__(self, template: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        self.template = template
        self.values = values
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = self._truth(self.template["Conditions"][name])
        return self._conditions[name]

    def _truth(self, node: Any) -> bool:
        if isinstance(node, Mapping) and len(node) == 1:
            ((fn, args),) = node.items()
            if fn == "Condition":
                return self.condition(args)
            if fn == "Fn::Equals":
                a, b = (self.resolve(x) for x in args)
                return _text(a) == _text(b)
            if fn == "Fn::Not":
                return not self._truth(args[0])
            if fn == "Fn::And":
                return all(self._truth(x) for x in args)
            if fn == "Fn::Or":
                return any(self._truth(x) for x in args)
        raise ValueError(f"not a condition: {node!r}")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            out = [self.resolve(v) for v in node]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(node, Mapping):
            return node
        if len(node) == 1:
            ((fn, args),) = node.items()
            if fn == "Ref":
                return self._ref(args)
            if fn == "Fn::GetAtt":
                res, attr = args if isinstance(args, list) else args.split(".", 1)
                return f"GetAtt:{res}.{attr}"
            if fn == "Fn::If":
                cond, yes, no = args
                return self.resolve(yes if self.condition(cond) else no)
            if fn == "Fn::Sub":
                return self._sub(args)
            if fn == "Fn::Join":
                sep, items = args
                parts = self.resolve(items)
                return sep.join(_text(p) for p in parts)
            if fn == "Fn::Select":
                index, items = (self.resolve(x) for x in args)
                return items[int(index)]
            if fn == "Fn::Split":
                sep, text = (self.resolve(x) for x in args)
                return text.split(sep)
            if fn == "Fn::FindInMap":
                m, k1, k2 = (self.resolve(x) for x in args)
                return self.template["Mappings"][m][_text(k1)][_text(k2)]
            if fn in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"):
                return self._truth(node)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.values:
            return self.values[name]
        if name in self.template.get("Resources", {}):
            return f"Ref:{name}"
        raise KeyError(f"Ref to unknown {name}")

    def _sub(self, args: Any) -> str:
        text, extra = (args, {}) if isinstance(args, str) else (args[0], args[1])
        names = {k: self.resolve(v) for k, v in extra.items()}

        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in names:
                return _text(names[key])
            if "." in key and key.split(".", 1)[0] in self.template.get("Resources", {}):
                return "GetAtt:" + key
            return _text(self._ref(key))

        return re.sub(r"\$\{([^}]+)\}", one, text)


def failed_rules(template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> list[str]:
    """The ``AssertDescription`` of every rule assertion that fails for ``parameters`` (as CloudFormation
    checks them before it creates anything)."""
    values = evaluate({"Parameters": template.get("Parameters", {})}, parameters).parameters
    resolver = _Resolver({**template, "Conditions": {}}, values)
    failed: list[str] = []
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not resolver._truth(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not resolver._truth(assertion["Assert"]):
                failed.append(f"{name}: {assertion.get('AssertDescription', '')}")
    return failed


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, order=True)
class Grant:
    """One allowed action on one resource (``condition``: the statement's Condition as sorted JSON)."""

    action: str
    resource: str
    condition: str = ""
    sid: str = ""


def statements(evaluated: Evaluated, role: str) -> list[dict[str, Any]]:
    """Every Allow/Deny statement of ``role``: its inline policies and the template's managed policies."""
    props = evaluated.resources[role]["Properties"]
    out: list[dict[str, Any]] = []
    for policy in props.get("Policies", []):
        out.extend(policy["PolicyDocument"]["Statement"])
    for arn in props.get("ManagedPolicyArns", []):
        if isinstance(arn, str) and arn.startswith("Ref:"):
            managed = evaluated.resources[arn[4:]]["Properties"]
            out.extend(managed["PolicyDocument"]["Statement"])
    return out


def grants(evaluated: Evaluated, role: str) -> set[Grant]:
    """The role's allowed (action, resource) pairs; ``Deny`` statements and ``NotAction`` are refused."""
    out: set[Grant] = set()
    for st in statements(evaluated, role):
        if st.get("Effect") != "Allow" or "NotAction" in st or "NotResource" in st:
            raise ValueError(f"{role}: only plain Allow statements are expected, got {st}")
        condition = json.dumps(st.get("Condition", {}), sort_keys=True) if st.get("Condition") else ""
        for action in _list(st["Action"]):
            for resource in _list(st["Resource"]):
                out.add(Grant(action, resource, condition, st.get("Sid", "")))
    return out


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def pairs(items: Iterable[Grant]) -> set[tuple[str, str]]:
    return {(g.action, g.resource) for g in items}
