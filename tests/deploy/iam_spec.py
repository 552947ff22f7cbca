"""What each role must grant: the code's AWS calls (from :mod:`tests.deploy.callgraph`) plus a short,
documented allowlist of what AWS itself needs on the runtime's behalf.

**Runtimes** are entry points into the package: the Lambda handler module, ``qldbstream run`` (the
standalone worker), ``qldbstream kcl`` with its record processor (``python -m qldbstream.kcl``).

**Components** attribute calls to resources: the functions of ``SqsDeadLetterQueue.put`` call SQS on the
DLQ, those of ``DynamoDBDedupeStore`` DynamoDB on the de-duplication table, those of ``DynamoDBGateStore``
DynamoDB on the delivery gate's table (and ``_oldest``'s Query on its index), and so on. For a runtime, a
component's operations are those reachable from its roots *within that runtime* (so the Lambda runtime
gets ``put``'s ``SendMessage``, and the replay command ``receive``/``delete`` too). Every operation a
runtime can reach must belong to a component: a new AWS call in a new place fails the audit with its line.

:func:`audit` compares a role of an evaluated template with that expectation in both directions and
reports what is missing, what is extra and which grants use ``*``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qldbstream.app.config import Settings
from tests.deploy.callgraph import CodeIndex, Op, Reach, iam_actions
from tests.deploy.cfn import Evaluated, Grant, grants

__all__ = [
    "COMPONENTS",
    "RUNTIMES",
    "SWITCHES",
    "Allowed",
    "Findings",
    "Runtime",
    "audit",
    "enabled_components",
    "expected_code_grants",
    "runtime_environment",
]


@dataclass(frozen=True)
class Runtime:
    """Entry points, and functions excluded with the reason the deployment never reaches them."""

    roots: tuple[str, ...]
    #: function key -> why the templates never make the runtime call it (checked by a test)
    excluded: Mapping[str, str] = field(default_factory=dict)

    def expand(self, index: CodeIndex) -> list[str]:
        """The root function keys; ``module:*`` stands for every function of the module."""
        out: list[str] = []
        for root in self.roots:
            if root.endswith(":*"):
                module = root[:-2]
                out += [k for k, f in index.functions.items() if f.module == module]
            elif root in index.functions:
                out.append(root)
            else:
                raise KeyError(f"runtime root {root} is not in the code (renamed?)")
        return out

    def reach(self, index: CodeIndex) -> Reach:
        return Reach(index, self.expand(index), frozenset(self.excluded))


RUNTIMES: dict[str, Runtime] = {
    # qldbstream.aws_lambda.handler and everything the module offers (make_handler, configured_handler).
    "lambda": Runtime(("qldbstream.runtimes.aws_lambda:*",)),
    # `qldbstream run` (the ECS standalone task's command).
    "standalone": Runtime(
        ("qldbstream.cli.run:run",),
        excluded={
            "qldbstream.io.checkpoint_dynamodb:DynamoDBCheckpointStore.create_table": (
                "only with --create-table; the template creates the checkpoint table and its task command "
                "does not pass the flag"
            ),
            "qldbstream.cli.run_archive:run_archive": (
                "only with --source (an operator replaying an archive: an export in S3 or saved records); "
                "the ECS task's command reads the stream and does not pass it"
            ),
        },
    ),
    # `qldbstream kcl` (the launcher) and `python -m qldbstream.kcl` (one record processor per shard).
    "kcl": Runtime(("qldbstream.cli.kcl:run", "qldbstream.runtimes.kcl:main")),
    # `qldbstream replay-dlq` (an operator's command; no template role runs it).
    "replay": Runtime(("qldbstream.cli.replay_dlq:run",)),
}

#: component -> the functions (or "Class.*" for every method) whose calls belong to it
COMPONENTS: dict[str, tuple[str, ...]] = {
    "dlq-write": ("qldbstream.io.dlq:SqsDeadLetterQueue.put",),
    "dlq-read": (
        "qldbstream.io.dlq:SqsDeadLetterQueue.receive",
        "qldbstream.io.dlq:SqsDeadLetterQueue.delete",
    ),
    # the payload bucket of dead letters over 256 KiB (dlq_payload_bucket)
    "dlq-payload": (
        "qldbstream.io.dlq:SqsDeadLetterQueue._store_payload",
        "qldbstream.io.dlq:SqsDeadLetterQueue._read_payload",
        "qldbstream.io.dlq:SqsDeadLetterQueue._drop_payload",
    ),
    "dedupe-table": ("qldbstream.io.dedupe_dynamodb:DynamoDBDedupeStore.*",),
    "checkpoint-table": ("qldbstream.io.checkpoint_dynamodb:DynamoDBCheckpointStore.*",),
    "gate-table": ("qldbstream.io.gate_dynamodb:DynamoDBGateStore.*",),
    # the one method that queries the gate table's index (parked-by-time): its resource is the index ARN,
    # so the other gate operations are not granted on the index
    "gate-index": ("qldbstream.io.gate_dynamodb:DynamoDBGateStore._oldest",),
    "stream-read": ("qldbstream.io.shards:StreamShards.*", "qldbstream.runtimes.lambda_failures:read_range"),
    "lambda-failures": ("qldbstream.runtimes.lambda_failures:SqsLambdaFailures.*",),
    "dlq-seal": ("qldbstream.io.sealers:KmsSealer.seal",),
    "dlq-unseal": ("qldbstream.io.sealers:KmsSealer.open",),
}


#: component -> whether the runtime's settings switch it on (components not listed are always on)
SWITCHES: dict[str, Callable[[Settings], bool]] = {
    "dlq-write": lambda s: bool(s.dlq) and not s.dlq.startswith("dir:"),
    "dlq-payload": lambda s: bool(s.dlq) and not s.dlq.startswith("dir:") and bool(s.dlq_payload_bucket),
    "dedupe-table": lambda s: s.dedupe_store.startswith("dynamodb:"),
    "gate-table": lambda s: s.gate_store.startswith("dynamodb:"),
    "gate-index": lambda s: s.gate_store.startswith("dynamodb:"),
    "dlq-seal": lambda s: s.masking and bool(s.masking_dlq_kms_key_id),
}


def enabled_components(settings: Settings) -> set[str]:
    return {c for c in COMPONENTS if SWITCHES.get(c, lambda _: True)(settings)}


def component_roots(index: CodeIndex, component: str) -> list[str]:
    out: list[str] = []
    for item in COMPONENTS[component]:
        if item.endswith(".*"):
            cls = item[:-2]
            if cls not in index.classes:
                raise KeyError(f"component {component}: class {cls} is not in the code (renamed?)")
            out += list(index.classes[cls].methods.values())
        elif item in index.functions:
            out.append(item)
        else:
            raise KeyError(f"component {component}: {item} is not in the code (renamed?)")
    return out


#: component -> the only services its calls go to: the DLQ's queue calls reach its payload bucket's
#: (another component, another resource) through the same methods
SERVICES_OF: dict[str, frozenset[str]] = {
    "dlq-write": frozenset({"sqs"}),
    "dlq-read": frozenset({"sqs"}),
    "dlq-payload": frozenset({"s3"}),
}


def component_ops(reach: Reach, component: str) -> set[Op]:
    ops = reach.ops(within=component_roots(reach.index, component))
    only = SERVICES_OF.get(component)
    return ops if only is None else {op for op in ops if op.service in only}


def unattributed(reach: Reach) -> dict[Op, list[str]]:
    """Operations the runtime can reach that no component accounts for, with where they are."""
    covered: set[Op] = set()
    for component in COMPONENTS:
        covered |= component_ops(reach, component)
    return {op: reach.sites(op) for op in reach.ops() - covered}


@dataclass(frozen=True)
class Allowed:
    """A grant the code does not call but AWS needs on its behalf; ``why`` is shown in failures."""

    action: str
    resource: str
    why: str
    condition: Mapping[str, Any] | None = None

    def grant(self) -> tuple[str, str]:
        return (self.action, self.resource)


@dataclass
class Findings:
    missing: set[tuple[str, str]] = field(default_factory=set)
    extra: set[tuple[str, str]] = field(default_factory=set)
    wildcard: set[Grant] = field(default_factory=set)
    conditions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.wildcard or self.conditions)

    def report(self) -> str:
        lines = []
        lines += [f"missing (the code calls it): {a} on {r}" for a, r in sorted(self.missing)]
        lines += [f"extra (nothing calls it, not allowlisted): {a} on {r}" for a, r in sorted(self.extra)]
        lines += [f"'*' resource not allowlisted: {g.action} ({g.sid})" for g in sorted(self.wildcard)]
        lines += self.conditions
        return "\n".join(lines)


def expected_code_grants(
    reach: Reach, resources: Mapping[str, Iterable[str]], enabled: set[str] | None = None
) -> tuple[set[tuple[str, str]], list[str]]:
    """(action, resource) pairs for every component the runtime reaches and its settings switch on, and
    the problems found: such a component without a resource here, or calls no component accounts for."""
    pairs: set[tuple[str, str]] = set()
    problems: list[str] = []
    for component in COMPONENTS:
        ops = component_ops(reach, component)
        if not ops or (enabled is not None and component not in enabled):
            continue
        if component not in resources:
            where = sorted({o.where for o in ops})
            problems.append(
                f"the runtime reaches {component} ({sorted(iam_actions(ops))} at {where}) but this "
                "deployment gives it no resource"
            )
            continue
        for resource in resources[component]:
            pairs |= {(action, resource) for action in iam_actions(ops)}
    for op, sites in unattributed(reach).items():
        chain = " -> ".join(reach.path_to(sites[0])) if sites else "?"
        problems.append(
            f"{op.service}:{op.operation} at {op.where} belongs to no component (reached via {chain})"
        )
    return pairs, problems


def audit(
    evaluated: Evaluated,
    role: str,
    reach: Reach | None,
    resources: Mapping[str, Iterable[str]],
    allowed: Iterable[Allowed],
    settings: Settings | None = None,
) -> Findings:
    """Compare ``role`` with what ``reach`` calls on ``resources`` plus ``allowed``; with ``settings`` (the
    runtime's configuration as the template sets it) only the components those settings switch on."""
    findings = Findings()
    expected: set[tuple[str, str]] = set()
    if reach is not None:
        enabled = enabled_components(settings) if settings is not None else None
        code, problems = expected_code_grants(reach, resources, enabled)
        expected |= code
        findings.conditions += problems
    allow = list(allowed)
    actual = grants(evaluated, role)
    actual_pairs = {(g.action, g.resource) for g in actual}
    findings.missing = (expected | {a.grant() for a in allow}) - actual_pairs
    findings.extra = actual_pairs - expected - {a.grant() for a in allow}
    allowed_star = {a.action for a in allow if a.resource == "*"}
    findings.wildcard = {g for g in actual if g.resource == "*" and g.action not in allowed_star}
    for a in allow:
        if a.condition is None:
            continue
        got = [g for g in actual if (g.action, g.resource) == a.grant()]
        want = json.dumps(a.condition, sort_keys=True)
        if any(g.condition != want for g in got):
            findings.conditions.append(f"{a.action} on {a.resource} must have the condition {want} ({a.why})")
    for g in actual:
        if "*" in g.action:
            findings.conditions.append(f"wildcard action {g.action} ({g.sid})")
    return findings


def runtime_environment(evaluated: Evaluated) -> dict[str, str]:
    """The QLDBSTREAM_* environment the template gives the runtime (Lambda or the ECS container)."""
    for resource in evaluated.resources.values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            return {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
        if resource["Type"] == "AWS::ECS::TaskDefinition":
            container = props["ContainerDefinitions"][0]
            env = {e["Name"]: str(e["Value"]) for e in container.get("Environment", [])}
            # ECS injects secrets as variables; stand in a value of the right shape
            env |= {e["Name"]: f"secret:{e['ValueFrom']}" for e in container.get("Secrets", [])}
            return env
    raise KeyError("no Lambda function or ECS task definition in the template")
