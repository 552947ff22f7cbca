"""Every role grants what the code calls, and no more (tests/deploy/iam_spec.py explains the method).

For each role and a few parameter scenarios, the evaluated template's (action, resource) pairs must equal
the code's calls on that deployment's resources plus the documented allowlist; ``*`` only where AWS
has no resource-level permission (and then with a condition where one exists). The mutation tests at the
end check that the audit notices a missing and an extra grant.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qldbstream.app.config import Settings, load_settings
from qldbstream.io.gate_dynamodb import EXPIRY_INDEX
from tests.deploy.callgraph import CodeIndex, Reach, iam_actions
from tests.deploy.cfn import Evaluated, evaluate, grants, statements
from tests.deploy.iam_spec import (
    RUNTIMES,
    Allowed,
    Findings,
    audit,
    component_ops,
    runtime_environment,
    unattributed,
)

ACCOUNT, REGION = "123456789012", "eu-west-1"
STREAM = "ledger-events"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STREAM}"
CONSUMER_ARN = f"{STREAM_ARN}/consumer/qldbstream:1700000000"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:qldbstream-dlq"
DLQ_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/qldbstream-dlq"
STREAM_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/11111111-1111-1111-1111-111111111111"
DLQ_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/22222222-2222-2222-2222-222222222222"
FAILURE_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/33333333-3333-3333-3333-333333333333"
MASKING_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/44444444-4444-4444-4444-444444444444"
DEDUPE = "qldbstream-dedupe"
PAYLOAD_BUCKET = "qldbstream-dlq-payloads"
PAYLOAD_OBJECTS = f"arn:aws:s3:::{PAYLOAD_BUCKET}/*"
DEDUPE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{DEDUPE}"
CHECKPOINTS = "qldbstream-checkpoints"
CHECKPOINTS_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{CHECKPOINTS}"
GATE = "qldbstream-gate"
GATE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{GATE}"
GATE_INDEX_ARN = f"{GATE_ARN}/index/{EXPIRY_INDEX}"
#: the gate table the Lambda and KCL templates create by default (GateTableName empty)
CREATED_GATE = {
    "gate-table": ["GetAtt:GateTable.Arn"],
    "gate-index": [f"GetAtt:GateTable.Arn/index/{EXPIRY_INDEX}"],
}
NAMED_GATE = {"gate-table": [GATE_ARN], "gate-index": [GATE_INDEX_ARN]}
#: the de-duplication table the Lambda and ECS templates create by default (DedupeTableName empty)
CREATED_DEDUPE = {"dedupe-table": ["GetAtt:DedupeTable.Arn"]}
HANDLER_POLICY = f"arn:aws:iam::{ACCOUNT}:policy/qldbstream-handlers"
HASH_KEY_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:qldbstream/hash-AbCdEf"


@dataclass(frozen=True)
class Scenario:
    """One deployment of one template: which role, which runtime's code, which resources and extras."""

    name: str
    template: str
    role: str
    runtime: str | None
    parameters: dict[str, Any]
    #: component -> the resources it acts on in this deployment (a component left out must not be reached)
    resources: dict[str, list[str]]
    allowed: list[Allowed] = field(default_factory=list)
    #: the settings the deployment's ConfigFile holds (written to a file for the settings check)
    config_file: dict[str, str] = field(default_factory=dict)


def _lambda_allowed(
    *, consumer: bool, stream_key: bool, dlq_key: bool, failure_key: bool, xray: bool
) -> list[Allowed]:
    esm = "the event source mapping polls the stream with the execution role"
    out = [
        Allowed("logs:CreateLogStream", "GetAtt:LogGroup.Arn", "Lambda writes the function's logs"),
        Allowed("logs:PutLogEvents", "GetAtt:LogGroup.Arn", "Lambda writes the function's logs"),
        *(
            Allowed(f"kinesis:{a}", STREAM_ARN, esm)
            for a in (
                "DescribeStream",
                "DescribeStreamSummary",
                "GetRecords",
                "GetShardIterator",
                "ListShards",
            )
        ),
        Allowed("sqs:SendMessage", "GetAtt:OnFailureQueue.Arn", "the mapping's on-failure destination"),
    ]
    if consumer:
        out += [
            Allowed(f"kinesis:{a}", CONSUMER_ARN, esm + " (enhanced fan-out)")
            for a in ("SubscribeToShard", "DescribeStreamConsumer")
        ]
    if stream_key:
        out.append(Allowed("kms:Decrypt", STREAM_KEY, "records of a stream encrypted with a customer key"))
    if dlq_key:
        out += [
            Allowed(a, DLQ_KEY, "SendMessage to a queue with a customer key")
            for a in ("kms:GenerateDataKey", "kms:Decrypt")
        ]
    if failure_key:
        out += [
            Allowed(a, FAILURE_KEY, "the on-failure queue's customer key")
            for a in ("kms:GenerateDataKey", "kms:Decrypt")
        ]
    if xray:
        out += [
            Allowed(a, "*", "X-Ray has no resource-level permissions")
            for a in ("xray:PutTraceSegments", "xray:PutTelemetryRecords")
        ]
    return out


#: What the KCL 3.1.3 MultiLangDaemon called against moto and kinesis-local (recorded, docs/deploy.md),
#: plus what AWS documents as its minimum: DescribeStreamSummary, and DeleteItem on the lease table
#: (leases of finished parent shards). Never CreateTable/UpdateTable: the template creates the tables.
KCL_TABLE_ACTIONS = ("DescribeTable", "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Scan")


def _kcl_allowed(*, metrics: bool) -> list[Allowed]:
    daemon = "the KCL daemon (Java) reads the stream"
    out = [
        Allowed(f"kinesis:{a}", STREAM_ARN, daemon)
        for a in ("DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords")
    ]
    for table in (
        "GetAtt:LeaseTable.Arn",
        "GetAtt:WorkerMetricStatsTable.Arn",
        "GetAtt:CoordinatorStateTable.Arn",
    ):
        out += [
            Allowed(f"dynamodb:{a}", table, "the KCL's lease and coordination tables")
            for a in KCL_TABLE_ACTIONS
        ]
    out.append(
        Allowed(
            "dynamodb:Query",
            "GetAtt:LeaseTable.Arn/index/*",
            "KCL 3 finds its leases through LeaseOwnerToLeaseKeyIndex",
        )
    )
    if metrics:
        out.append(
            Allowed(
                "cloudwatch:PutMetricData",
                "*",
                "the KCL's metrics; PutMetricData has no resource-level permissions",
                condition={"StringEquals": {"cloudwatch:namespace": "qldbstream"}},
            )
        )
    return out


LAMBDA_BASE = {
    "CodeS3Bucket": "artifacts",
    "CodeS3Key": "lambda.zip",
    "StreamArn": STREAM_ARN,
    "DlqQueueUrl": DLQ_URL,
    "DlqQueueArn": DLQ_ARN,
}
ECS_BASE = {
    "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/qldbstream:1",
    "VpcId": "vpc-0123456789abcdef0",
    "Subnets": "subnet-0123456789abcdef0",
    "StreamName": STREAM,
    "DlqQueueUrl": DLQ_URL,
    "DlqQueueArn": DLQ_ARN,
}

SCENARIOS = [
    Scenario(
        "lambda-minimal",
        "lambda-consumer.yaml",
        "ExecutionRole",
        "lambda",
        LAMBDA_BASE,
        {"dlq-write": [DLQ_ARN], **CREATED_DEDUPE, **CREATED_GATE},
        _lambda_allowed(consumer=False, stream_key=False, dlq_key=False, failure_key=False, xray=False),
    ),
    Scenario(
        "lambda-everything",
        "lambda-consumer.yaml",
        "ExecutionRole",
        "lambda",
        {
            **LAMBDA_BASE,
            "ConsumerArn": CONSUMER_ARN,
            "StreamKmsKey": STREAM_KEY,
            "DlqKmsKey": DLQ_KEY,
            "OnFailureKmsKey": FAILURE_KEY,
            "DedupeTableName": DEDUPE,
            "GateTableName": GATE,
            "Delivery": "chain-confirmed",
            "Tracing": "Active",
            "Masking": "true",
            "MaskingDlqKmsKeyArn": MASKING_KEY,
            "DlqPayloadBucket": PAYLOAD_BUCKET,
            "ConfigFile": "/var/task/qldbstream.toml",
            "HandlerPolicyArns": HANDLER_POLICY,
        },
        {
            "dlq-write": [DLQ_ARN],
            "dlq-payload": [PAYLOAD_OBJECTS],
            "dedupe-table": [DEDUPE_ARN],
            "dlq-seal": [MASKING_KEY],
            **NAMED_GATE,
        },
        _lambda_allowed(consumer=True, stream_key=True, dlq_key=True, failure_key=True, xray=True),
        config_file={"masking_hash_key": "a-secret-of-at-least-16-bytes"},
    ),
    Scenario(
        "kcl-minimal",
        "ecs-worker.yaml",
        "TaskRole",
        "kcl",
        ECS_BASE,
        {"dlq-write": [DLQ_ARN], **CREATED_DEDUPE, **CREATED_GATE},
        _kcl_allowed(metrics=False),
    ),
    Scenario(
        "kcl-everything",
        "ecs-worker.yaml",
        "TaskRole",
        "kcl",
        {
            **ECS_BASE,
            "KclMetricsLevel": "SUMMARY",
            "DedupeTableName": DEDUPE,
            "GateTableName": GATE,
            "Delivery": "chain-confirmed",
            "StreamKmsKey": STREAM_KEY,
            "DlqKmsKey": DLQ_KEY,
            "Masking": "true",
            "MaskingDlqKmsKeyArn": MASKING_KEY,
            "MaskingHashKeySecretArn": HASH_KEY_SECRET,
            "DlqPayloadBucket": PAYLOAD_BUCKET,
        },
        {
            "dlq-write": [DLQ_ARN],
            "dlq-payload": [PAYLOAD_OBJECTS],
            "dedupe-table": [DEDUPE_ARN],
            "dlq-seal": [MASKING_KEY],
            **NAMED_GATE,
        },
        [
            *_kcl_allowed(metrics=True),
            Allowed("kms:Decrypt", STREAM_KEY, "the daemon reads a stream encrypted with a customer key"),
            *(
                Allowed(a, DLQ_KEY, "SendMessage to a queue with a customer key")
                for a in ("kms:GenerateDataKey", "kms:Decrypt")
            ),
        ],
    ),
    Scenario(
        "standalone",
        "ecs-worker.yaml",
        "TaskRole",
        "standalone",
        {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": CHECKPOINTS, "DedupeTableName": DEDUPE},
        {
            "dlq-write": [DLQ_ARN],
            "dedupe-table": [DEDUPE_ARN],
            "checkpoint-table": [CHECKPOINTS_ARN],
            "stream-read": [STREAM_ARN],
        },
    ),
    # The gate store switched the other way: no gate table, no gate grants (Lambda, KCL); the standalone
    # worker with a DynamoDB gate store gets the created table like the others. The de-duplication table
    # is created in every one of them that names none (DedupeTableName empty).
    Scenario(
        "lambda-gate-in-memory",
        "lambda-consumer.yaml",
        "ExecutionRole",
        "lambda",
        {**LAMBDA_BASE, "GateStore": "memory"},
        {"dlq-write": [DLQ_ARN], **CREATED_DEDUPE},
        _lambda_allowed(consumer=False, stream_key=False, dlq_key=False, failure_key=False, xray=False),
    ),
    Scenario(
        "kcl-gate-in-memory",
        "ecs-worker.yaml",
        "TaskRole",
        "kcl",
        {**ECS_BASE, "GateStore": "memory"},
        {"dlq-write": [DLQ_ARN], **CREATED_DEDUPE},
        _kcl_allowed(metrics=False),
    ),
    Scenario(
        "standalone-gate-table",
        "ecs-worker.yaml",
        "TaskRole",
        "standalone",
        {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": CHECKPOINTS, "GateStore": "dynamodb"},
        {
            "dlq-write": [DLQ_ARN],
            "checkpoint-table": [CHECKPOINTS_ARN],
            "stream-read": [STREAM_ARN],
            **CREATED_DEDUPE,
            **CREATED_GATE,
        },
    ),
]


@pytest.fixture(scope="module")
def reaches(code_index: CodeIndex) -> dict[str, Reach]:
    return {name: runtime.reach(code_index) for name, runtime in RUNTIMES.items()}


def settings_of(evaluated: Evaluated, config_file: dict[str, str], directory: Path) -> Settings:
    """The runtime's settings exactly as the template configures it (and as the runtime validates
    them); QLDBSTREAM_CONFIG points at a file holding ``config_file``."""
    env = runtime_environment(evaluated)
    if "QLDBSTREAM_CONFIG" in env:
        path = directory / "qldbstream.json"
        path.write_text(json.dumps(config_file))
        env["QLDBSTREAM_CONFIG"] = str(path)
    return load_settings(env)


def _audit(scenario: Scenario, template: dict[str, Any], reaches: dict[str, Reach]) -> Findings:
    evaluated = evaluate(template, scenario.parameters)
    reach = reaches[scenario.runtime] if scenario.runtime else None
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_of(evaluated, scenario.config_file, Path(tmp))
    return audit(evaluated, scenario.role, reach, scenario.resources, scenario.allowed, settings)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_role_grants_what_the_code_calls_and_no_more(
    scenario: Scenario, templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    findings = _audit(scenario, templates[scenario.template], reaches)
    assert findings.ok, f"{scenario.template} {scenario.role} ({scenario.name}):\n{findings.report()}"


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_every_reachable_aws_call_belongs_to_a_component(runtime: str, reaches: dict[str, Reach]) -> None:
    """A new AWS call (a new client, a new store) must be given a component and a resource."""
    reach = reaches[runtime]
    left = unattributed(reach)
    assert not left, "\n".join(
        f"{op.service}:{op.operation} at {op.where} via {' -> '.join(reach.path_to(s[0]))}"
        for op, s in left.items()
    )
    assert reach.ops(), f"the analysis found no AWS call at all for {runtime}: is it still looking?"
    assert not reach.dynamic(), f"{runtime} calls operations named by data at {sorted(reach.dynamic())}"


def test_the_runtimes_call_what_we_expect(reaches: dict[str, Reach]) -> None:
    """The analysis' result, pinned: a change here is a change of the roles (and of docs/deploy.md)."""
    lam = iam_actions(reaches["lambda"].ops())
    assert lam == {
        "sqs:SendMessage",
        "dynamodb:DescribeTable",
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:UpdateItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "dynamodb:DeleteItem",  # the shared de-duplication store gives up a dead-lettered record's claim
        "kms:GenerateDataKey",
        "s3:PutObject",  # a dead letter over 256 KiB to the payload bucket (and its removal when
        "s3:DeleteObject",  # the SQS send fails after it)
    }
    assert iam_actions(reaches["kcl"].ops()) == lam  # the record processor runs the same pipeline
    standalone = iam_actions(reaches["standalone"].ops())
    assert standalone - lam == {
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    }
    # The delivery gate's store (the GateTable and GateExpiryIndex statements, docs/deploy.md): never
    # CreateTable, DeleteItem or Scan; on the index only the expiry Query.
    for runtime in ("lambda", "kcl", "standalone"):
        assert iam_actions(component_ops(reaches[runtime], "gate-table")) == {
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:Query",
        }, runtime
        assert iam_actions(component_ops(reaches[runtime], "gate-index")) == {"dynamodb:Query"}, runtime
    replay = iam_actions(reaches["replay"].ops())
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "kinesis:GetRecords", "kms:Decrypt"} <= replay


def test_the_standalone_exclusion_holds(templates: dict[str, dict[str, Any]], code_index: CodeIndex) -> None:
    """`create_table` is left out of the standalone runtime because the task never passes --create-table."""
    evaluated = evaluate(
        templates["ecs-worker.yaml"],
        {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": CHECKPOINTS},
    )
    container = evaluated.resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert "--create-table" not in container["Command"]
    full = Reach(code_index, RUNTIMES["standalone"].expand(code_index))
    assert "dynamodb:CreateTable" in iam_actions(full.ops()), (
        "the exclusion no longer excludes anything: drop it"
    )


def test_qldb_journal_stream_role_is_the_seeds_least_privilege(templates: dict[str, dict[str, Any]]) -> None:
    base = {
        "LedgerName": "bank",
        "JournalStreamName": "events",
        "KinesisStreamArn": STREAM_ARN,
        "InclusiveStartTime": "2024-01-01T00:00:00Z",
    }
    seed = {(f"kinesis:{a}", STREAM_ARN) for a in ("PutRecord", "PutRecords", "DescribeStream", "ListShards")}
    plain = evaluate(templates["qldb-stream.yaml"], base)
    assert {(g.action, g.resource) for g in grants(plain, "JournalStreamRole")} == seed
    keyed = evaluate(templates["qldb-stream.yaml"], {**base, "KinesisKmsKey": STREAM_KEY})
    assert {(g.action, g.resource) for g in grants(keyed, "JournalStreamRole")} == seed | {
        ("kms:GenerateDataKey", STREAM_KEY)
    }
    trust = plain.resources["JournalStreamRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "qldb.amazonaws.com"}
    assert trust["Condition"]["ArnLike"]["aws:SourceArn"] == f"arn:aws:qldb:{REGION}:{ACCOUNT}:stream/bank/*"
    stream = plain.resources["JournalStream"]["Properties"]
    assert "ExclusiveEndTime" not in stream
    bounded = evaluate(templates["qldb-stream.yaml"], {**base, "ExclusiveEndTime": "2025-01-01T00:00:00Z"})
    assert bounded.resources["JournalStream"]["Properties"]["ExclusiveEndTime"] == "2025-01-01T00:00:00Z"


def test_ecs_execution_role_only_pulls_and_logs(templates: dict[str, dict[str, Any]]) -> None:
    repo = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/qldbstream"
    evaluated = evaluate(templates["ecs-worker.yaml"], {**ECS_BASE, "EcrRepositoryArn": repo})
    got = {(g.action, g.resource) for g in grants(evaluated, "ExecutionRole")}
    assert got == {
        ("logs:CreateLogStream", "GetAtt:LogGroup.Arn"),
        ("logs:PutLogEvents", "GetAtt:LogGroup.Arn"),
        ("ecr:GetAuthorizationToken", "*"),  # no resource-level permissions
        ("ecr:BatchCheckLayerAvailability", repo),
        ("ecr:GetDownloadUrlForLayer", repo),
        ("ecr:BatchGetImage", repo),
    }
    public = evaluate(templates["ecs-worker.yaml"], ECS_BASE)
    assert {g.action for g in grants(public, "ExecutionRole")} == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    secret = evaluate(templates["ecs-worker.yaml"], {**ECS_BASE, "MaskingHashKeySecretArn": HASH_KEY_SECRET})
    extra = {(g.action, g.resource) for g in grants(secret, "ExecutionRole")} - {
        (g.action, g.resource) for g in grants(public, "ExecutionRole")
    }
    assert extra == {("secretsmanager:GetSecretValue", HASH_KEY_SECRET)}  # ECS injects it, not the task
    container = secret.resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["Secrets"] == [{"Name": "QLDBSTREAM_MASKING_HASH_KEY", "ValueFrom": HASH_KEY_SECRET}]


def test_roles_attach_handler_policies_only_when_given(templates: dict[str, dict[str, Any]]) -> None:
    lam = evaluate(templates["lambda-consumer.yaml"], LAMBDA_BASE)
    assert "ManagedPolicyArns" not in lam.resources["ExecutionRole"]["Properties"]
    with_policy = evaluate(
        templates["lambda-consumer.yaml"], {**LAMBDA_BASE, "HandlerPolicyArns": HANDLER_POLICY}
    )
    assert with_policy.resources["ExecutionRole"]["Properties"]["ManagedPolicyArns"] == [HANDLER_POLICY]


# --- handler policies -------------------------------------------------------------------------

HANDLER_PARAMETERS = {
    "FraudStateTableArn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/fraud-state",
    "FraudAlertQueueArns": f"arn:aws:sqs:{REGION}:{ACCOUNT}:alerts",
    "FraudAlertTopicArns": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
    "AnalyticsTableArns": ",".join(
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{t}" for t in ("analytics-state", "analytics-results")
    ),
    "AnalyticsBucketName": "analytics-bucket",
    "AnalyticsPrefix": "results/",
    "ExportBucketName": "export-bucket",
    "ExportPrefix": "qldb/",
    "S3KmsKeyArn": DLQ_KEY,
    "ReplicationStreamArns": f"arn:aws:kinesis:us-west-2:{ACCOUNT}:stream/replica",
    "ReplicationKmsKeyArns": STREAM_KEY,
    "WorkflowExecutionsTableArn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/flow-executions",
    "WorkflowStateMachineArn": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:flow",
    "WorkflowTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:flow",
    "WorkflowTableArn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/flow",
}
#: Granted beyond the handler's calls, and why.
HANDLER_ALLOWED = {
    "export": {
        "s3:ListBucket": "a GetObject of a missing key answers 403 instead of 404 NoSuchKey without it"
    },
}
#: Handlers whose calls the data decides (``getattr(client, computed)``): what the policy offers for them.
HANDLER_DYNAMIC = {
    "workflow": {
        "sns:Publish": "Task state arn:aws:states:::sns:publish",
        "dynamodb:GetItem": "Task state arn:aws:states:::dynamodb:getItem",
        "dynamodb:PutItem": "Task state arn:aws:states:::dynamodb:putItem",
        "dynamodb:UpdateItem": "Task state arn:aws:states:::dynamodb:updateItem",
    },
}
HANDLER_KEYS = {"Analytics": "S3KmsKeyArn", "Export": "S3KmsKeyArn", "Replication": "ReplicationKmsKeyArns"}


def handler_packages(index: CodeIndex) -> dict[str, list[str]]:
    """handler package (``fraud``...) -> its Handler/Router subclasses."""
    out: dict[str, list[str]] = {}
    for key, cls in index.classes.items():
        if not cls.module.startswith("qldbstream_handlers."):
            continue
        if any(index.classes[b].name in ("Handler", "Router") for b in index.mro(key)[1:]):
            out.setdefault(cls.module.split(".")[1], []).append(key)
    return out


def handler_reach(index: CodeIndex, classes: list[str]) -> Reach:
    """Everything the handler classes' methods reach (the pipeline calls any of them)."""
    roots = [m for c in classes for m in index.classes[c].methods.values()] + [
        f"{c}.<class>" for c in classes
    ]
    return Reach(index, roots)


def _policy_statements(templates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    evaluated = evaluate(templates["handler-policies.yaml"], HANDLER_PARAMETERS)
    return list(evaluated.resources["HandlerPolicy"]["Properties"]["PolicyDocument"]["Statement"])


def _handler_of(sid: str) -> str:
    for name in ("Fraud", "Analytics", "Export", "Replication", "Workflow"):
        if sid.startswith(name):
            return name.lower()
    raise AssertionError(f"statement {sid} names no handler")


@pytest.mark.parametrize("handler", ["fraud", "analytics", "export", "replication", "workflow"])
def test_handler_policy_matches_the_handlers_code(
    handler: str, templates: dict[str, dict[str, Any]], code_index: CodeIndex
) -> None:
    classes = handler_packages(code_index).get(handler)
    if not classes:
        pytest.skip(f"qldbstream_handlers.{handler} has no Handler class yet (being written)")
    reach = handler_reach(code_index, classes)
    needed = iam_actions(reach.ops())
    dynamic = reach.dynamic()
    assert bool(dynamic) == (handler in HANDLER_DYNAMIC), (
        f"{handler}: calls computed from data at {sorted(dynamic)}; HANDLER_DYNAMIC must say what the policy "
        "offers for them (and docs/deploy.md)"
    )
    own = [
        action
        for st in _policy_statements(templates)
        if _handler_of(st["Sid"]) == handler
        for action in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    ]
    # KMS: the keys' statements sit beside the resources they protect; what the code calls itself
    # (the replica's sealed raw copy: kms:GenerateDataKey) must be among them
    kms_needed = {a for a in needed if a.startswith("kms:")}
    needed -= kms_needed
    assert kms_needed <= {a for a in own if a.startswith("kms:")}, (
        f"{handler}: the code calls {sorted(kms_needed)}, no statement of its policy grants it"
    )
    granted = {action for action in own if not action.startswith("kms:")}
    allowed = set(HANDLER_ALLOWED.get(handler, {})) | set(HANDLER_DYNAMIC.get(handler, {}))
    assert needed <= granted, (
        f"{handler}: the code calls {sorted(needed - granted)}, the policy does not grant it"
    )
    assert granted <= needed | allowed, (
        f"{handler}: the policy grants {sorted(granted - needed - allowed)}, nothing calls it"
    )


def test_every_handler_that_calls_aws_has_a_policy(
    templates: dict[str, dict[str, Any]], code_index: CodeIndex
) -> None:
    covered = {_handler_of(st["Sid"]) for st in _policy_statements(templates)}
    for handler, classes in handler_packages(code_index).items():
        ops = handler_reach(code_index, classes).ops()
        if ops:
            assert handler in covered, (
                f"qldbstream_handlers.{handler} calls {sorted(iam_actions(ops))} and has no policy"
            )


def test_handler_policy_resources_are_its_parameters(templates: dict[str, dict[str, Any]]) -> None:
    """No '*': each statement acts on the handler's own resources only."""
    given = set()
    for value in HANDLER_PARAMETERS.values():
        given |= set(value.split(","))
    for st in _policy_statements(templates):
        for resource in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
            assert resource != "*", st
            bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
            assert resource in given or bucket in given, f"{st['Sid']}: {resource} is not a handler parameter"
    kms = [
        st
        for st in _policy_statements(templates)
        if str(st["Action"]).startswith("kms") or "kms:" in str(st["Action"])
    ]
    assert {st["Resource"] if isinstance(st["Resource"], str) else st["Resource"][0] for st in kms} <= {
        DLQ_KEY,
        STREAM_KEY,
    }
    nothing = evaluate(templates["handler-policies.yaml"], {})
    assert "HandlerPolicy" not in nothing.resources and nothing.outputs["PolicyArn"] == ""


# --- the audit itself notices -------------------------------------------------------------------


def _mutate(
    template: dict[str, Any], role: str, change: Callable[[list[dict[str, Any]]], None]
) -> dict[str, Any]:
    copied = copy.deepcopy(template)
    change(copied["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"])
    return copied


def _statement(items: list[dict[str, Any]], sid: str) -> dict[str, Any]:
    return next(s for s in items if isinstance(s, dict) and s.get("Sid") == sid)


def test_audit_notices_a_missing_permission(
    templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    def drop_update_item(items: list[dict[str, Any]]) -> None:
        dedupe = _statement(items, "DedupeTable")
        dedupe["Action"] = [a for a in dedupe["Action"] if a != "dynamodb:UpdateItem"]

    # lambda-everything (a named de-duplication table), lambda-minimal (the one the stack creates)
    for scenario, table in ((SCENARIOS[1], DEDUPE_ARN), (SCENARIOS[0], "GetAtt:DedupeTable.Arn")):
        findings = _audit(
            scenario, _mutate(templates[scenario.template], scenario.role, drop_update_item), reaches
        )
        assert findings.missing == {("dynamodb:UpdateItem", table)}, scenario.name
        assert not findings.extra, scenario.name


def test_audit_notices_an_extra_permission(
    templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    scenario = SCENARIOS[0]  # lambda-minimal

    def add_receive(items: list[dict[str, Any]]) -> None:
        _statement(items, "DeadLetterQueue")["Action"] = ["sqs:SendMessage", "sqs:ReceiveMessage"]

    findings = _audit(scenario, _mutate(templates[scenario.template], scenario.role, add_receive), reaches)
    assert findings.extra == {("sqs:ReceiveMessage", DLQ_ARN)}
    assert not findings.missing


def test_audit_notices_a_wildcard_resource_and_a_dropped_condition(
    templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    scenario = SCENARIOS[0]

    def widen(items: list[dict[str, Any]]) -> None:
        _statement(items, "DeadLetterQueue")["Resource"] = "*"

    findings = _audit(scenario, _mutate(templates[scenario.template], scenario.role, widen), reaches)
    assert {g.action for g in findings.wildcard} == {"sqs:SendMessage"}
    assert ("sqs:SendMessage", DLQ_ARN) in findings.missing

    kcl = SCENARIOS[3]

    def drop_condition(items: list[dict[str, Any]]) -> None:
        metrics = next(i for i in items if "Fn::If" in i and i["Fn::If"][1].get("Sid") == "KclMetrics")[
            "Fn::If"
        ][1]
        del metrics["Condition"]

    findings = _audit(kcl, _mutate(templates[kcl.template], kcl.role, drop_condition), reaches)
    assert any("cloudwatch:PutMetricData" in line for line in findings.conditions)


def test_audit_notices_gate_grants_on_the_wrong_resource(
    templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    """Only the expiry Query may act on the gate table's index; a dropped index grant is missing."""
    scenario = SCENARIOS[1]  # lambda-everything: a named gate table

    def widen_index(items: list[dict[str, Any]]) -> None:
        index = next(i for i in items if "Fn::If" in i and i["Fn::If"][1].get("Sid") == "GateExpiryIndex")
        index["Fn::If"][1]["Action"] = ["dynamodb:Query", "dynamodb:GetItem"]

    findings = _audit(scenario, _mutate(templates[scenario.template], scenario.role, widen_index), reaches)
    assert findings.extra == {("dynamodb:GetItem", GATE_INDEX_ARN)}
    assert not findings.missing

    def drop_index(items: list[dict[str, Any]]) -> None:
        items[:] = [
            i for i in items if not ("Fn::If" in i and i["Fn::If"][1].get("Sid") == "GateExpiryIndex")
        ]

    findings = _audit(scenario, _mutate(templates[scenario.template], scenario.role, drop_index), reaches)
    assert findings.missing == {("dynamodb:Query", GATE_INDEX_ARN)}
    assert not findings.extra


def test_audit_notices_a_call_without_a_resource(
    templates: dict[str, dict[str, Any]], reaches: dict[str, Reach]
) -> None:
    """The standalone worker reads the stream; a deployment that gives stream-read no resource fails."""
    scenario = SCENARIOS[4]
    without = Scenario(
        **{
            **scenario.__dict__,
            "resources": {k: v for k, v in scenario.resources.items() if k != "stream-read"},
        }
    )
    findings = _audit(without, templates[scenario.template], reaches)
    assert any("stream-read" in line for line in findings.conditions)
    assert ("kinesis:GetRecords", STREAM_ARN) in findings.extra


def test_no_role_statement_uses_a_wildcard_action(templates: dict[str, dict[str, Any]]) -> None:
    for scenario in SCENARIOS:
        for st in statements(evaluate(templates[scenario.template], scenario.parameters), scenario.role):
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert not [a for a in actions if "*" in a], st
