"""The templates against the code they deploy: event source mapping semantics, queues, keys, table schemas,
the runtimes' configuration and commands, the shard-count table, the dashboard's metrics, the composition."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from qldbstream.api import metrics as qmetrics
from qldbstream.app.config import Settings, load_settings
from qldbstream.core.gate import Delivery
from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
from qldbstream.io.gate_dynamodb import DEFAULT_TTL, EXPIRY_INDEX, DynamoDBGateStore
from tests.deploy.callgraph import CodeIndex
from tests.deploy.cfn import evaluate, failed_rules
from tests.deploy.iam_spec import runtime_environment
from tests.deploy.test_iam import ECS_BASE, LAMBDA_BASE

REPO = Path(__file__).resolve().parents[2]
Templates = dict[str, dict[str, Any]]


def _shard_count_module() -> Any:
    spec = importlib.util.spec_from_file_location("shard_count", REPO / "deploy" / "shard_count.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shard_count"] = module
    spec.loader.exec_module(module)
    return module


shard_count = _shard_count_module()


# --- the event source mapping ------------------------------------------------------------------


def test_event_source_mapping_defaults_match_the_runtime(templates: Templates) -> None:
    esm = evaluate(templates["lambda-consumer.yaml"], LAMBDA_BASE).resources["EventSourceMapping"][
        "Properties"
    ]
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]  # without it failures are skipped
    assert esm["StartingPosition"] == "TRIM_HORIZON"
    assert esm["BisectBatchOnFunctionError"] == "true"
    assert esm["MaximumRetryAttempts"] == "-1"  # qldbstream dead-letters poison itself: never discard
    assert esm["MaximumRecordAgeInSeconds"] == "-1"
    assert esm["ParallelizationFactor"] == "1"  # blocks in order
    assert esm["DestinationConfig"] == {"OnFailure": {"Destination": "GetAtt:OnFailureQueue.Arn"}}
    assert "TumblingWindowInSeconds" not in esm and "StartingPositionTimestamp" not in esm
    assert esm["EventSourceArn"] == LAMBDA_BASE["StreamArn"]
    windowed = evaluate(templates["lambda-consumer.yaml"], {**LAMBDA_BASE, "TumblingWindowInSeconds": 60})
    assert windowed.resources["EventSourceMapping"]["Properties"]["TumblingWindowInSeconds"] == "60"


def test_rules_refuse_settings_the_runtime_cannot_honour(templates: Templates) -> None:
    template = templates["lambda-consumer.yaml"]
    assert failed_rules(template, LAMBDA_BASE) == []
    parallel = {**LAMBDA_BASE, "ParallelizationFactor": 4, "LatePolicy": "drop"}
    assert [f.split(":")[0] for f in failed_rules(template, parallel)] == ["OutOfOrderNeedsDeliverLate"]
    # deliver-late is the default, and so is a shared de-duplication table (created when none is named)
    assert failed_rules(template, {**LAMBDA_BASE, "ParallelizationFactor": 4}) == []
    ok = {**parallel, "LatePolicy": "deliver-late", "DedupeTableName": "dedupe"}
    assert failed_rules(template, ok) == []
    assert failed_rules(template, {**LAMBDA_BASE, "StartingPosition": "AT_TIMESTAMP"})
    assert failed_rules(template, {**LAMBDA_BASE, "CodeS3Key": ""})
    assert failed_rules(template, {**LAMBDA_BASE, "Masking": "true"})  # no DLQ key, no hash key
    image = {**LAMBDA_BASE, "PackageType": "Image", "CodeS3Bucket": "", "CodeS3Key": ""}
    assert failed_rules(template, image) and not failed_rules(template, {**image, "ImageUri": "x"})
    worker = templates["ecs-worker.yaml"]
    assert failed_rules(worker, {**ECS_BASE, "Runtime": "standalone"})
    assert not failed_rules(worker, {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp"})


def test_rules_refuse_gate_settings_the_runtime_cannot_honour(templates: Templates) -> None:
    template = templates["lambda-consumer.yaml"]
    parallel = {**LAMBDA_BASE, "ParallelizationFactor": 4, "LatePolicy": "deliver-late"}
    assert failed_rules(template, parallel) == []  # the gate and de-duplication tables are on by default
    assert [f.split(":")[0] for f in failed_rules(template, {**parallel, "GateStore": "memory"})] == [
        "ConcurrentBatchesNeedDynamoDBGate"
    ]
    assert failed_rules(template, {**LAMBDA_BASE, "GateTableName": "gate"}) == []
    assert [
        f.split(":")[0]
        for f in failed_rules(template, {**LAMBDA_BASE, "GateTableName": "g", "GateStore": "memory"})
    ] == ["GateTableNeedsDynamoDBGate"]
    worker = templates["ecs-worker.yaml"]
    standalone = {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp"}
    assert failed_rules(worker, {**ECS_BASE, "GateTableName": "gate"}) == []  # auto: kcl -> dynamodb
    assert failed_rules(worker, {**standalone, "GateTableName": "gate", "GateStore": "dynamodb"}) == []
    for refused in (
        {**ECS_BASE, "GateTableName": "gate", "GateStore": "memory"},
        {**standalone, "GateTableName": "gate"},  # auto: standalone -> memory, the name would be ignored
    ):
        assert [f.split(":")[0] for f in failed_rules(worker, refused)] == ["GateTableNeedsDynamoDBGate"]


def test_lambda_function_runs_the_handler_on_the_python_runtime_parameter(templates: Templates) -> None:
    template = templates["lambda-consumer.yaml"]
    parameter = template["Parameters"]["PythonRuntime"]
    assert parameter["Default"] == "python3.13"
    assert parameter["AllowedValues"] == ["python3.11", "python3.12", "python3.13"]
    for runtime in parameter["AllowedValues"]:
        chosen = evaluate(template, {**LAMBDA_BASE, "PythonRuntime": runtime})
        assert chosen.resources["Function"]["Properties"]["Runtime"] == runtime
    # main.yaml passes its LambdaPythonRuntime through, with the same choices and default.
    main = templates["main.yaml"]
    assert main["Parameters"]["LambdaPythonRuntime"]["AllowedValues"] == parameter["AllowedValues"]
    assert main["Parameters"]["LambdaPythonRuntime"]["Default"] == parameter["Default"]
    passed = main["Resources"]["Lambda"]["Properties"]["Parameters"]["PythonRuntime"]
    assert passed == {"Ref": "LambdaPythonRuntime"}
    function = evaluate(template, LAMBDA_BASE).resources["Function"]["Properties"]
    assert function["Handler"] == "qldbstream.aws_lambda.handler"
    assert function["Runtime"] == "python3.13"
    assert function["LoggingConfig"]["LogFormat"] == "JSON"
    module, _, attr = function["Handler"].rpartition(".")
    handler = getattr(importlib.import_module(module), attr)
    assert inspect.isfunction(handler), f"{function['Handler']} is {handler!r}, not a function"
    image = evaluate(
        templates["lambda-consumer.yaml"], {**LAMBDA_BASE, "PackageType": "Image", "ImageUri": "u"}
    )
    props = image.resources["Function"]["Properties"]
    assert "Handler" not in props and "Runtime" not in props and props["Code"] == {"ImageUri": "u"}


# --- the runtimes' configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "parameters"),
    [
        ("lambda-consumer.yaml", LAMBDA_BASE),
        (
            "lambda-consumer.yaml",
            {**LAMBDA_BASE, "DedupeTableName": "d", "Handlers": "audit", "LatePolicy": "reorder"},
        ),
        ("ecs-worker.yaml", ECS_BASE),
        (
            "ecs-worker.yaml",
            {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp", "DedupeTableName": "d"},
        ),
        ("lambda-consumer.yaml", {**LAMBDA_BASE, "GateTableName": "g", "Delivery": "chain-confirmed"}),
        ("lambda-consumer.yaml", {**LAMBDA_BASE, "GateStore": "memory", "GateMaxWaitSeconds": 3600}),
        ("ecs-worker.yaml", {**ECS_BASE, "GateTableName": "g", "Delivery": "chain-confirmed"}),
        ("ecs-worker.yaml", {**ECS_BASE, "GateStore": "memory"}),
        (
            "ecs-worker.yaml",
            {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp", "GateStore": "dynamodb"},
        ),
    ],
)
def test_the_environment_is_valid_qldbstream_configuration(
    template: str, parameters: dict[str, Any], templates: Templates
) -> None:
    """The runtime reads QLDBSTREAM_* strictly (unknown names fail at start-up): load it as it would."""
    env = runtime_environment(evaluate(templates[template], parameters))
    settings = load_settings(env)
    assert settings.dlq == f"sqs:{parameters['DlqQueueUrl']}"
    # never memory: a de-duplication table shared by every container / task (created, or the one named)
    assert settings.dedupe_store == f"dynamodb:{parameters.get('DedupeTableName', 'Ref:DedupeTable')}"
    if template == "ecs-worker.yaml":
        assert settings.stream_name == ECS_BASE["StreamName"] and settings.region == "eu-west-1"
    assert settings.delivery == Delivery(parameters.get("Delivery", "verified"))
    assert settings.gate_max_wait_seconds == float(parameters.get("GateMaxWaitSeconds", 600))
    gate = parameters.get("GateStore", "memory" if parameters.get("Runtime") == "standalone" else "dynamodb")
    if gate == "memory":
        assert settings.gate_store == "memory"
    else:
        assert settings.gate_store == f"dynamodb:{parameters.get('GateTableName', 'Ref:GateTable')}"


@pytest.mark.parametrize(
    ("template", "parameters", "created"),
    [
        ("lambda-consumer.yaml", LAMBDA_BASE, True),  # on by default: streams without aggregation need it
        ("lambda-consumer.yaml", {**LAMBDA_BASE, "GateTableName": "g"}, False),
        ("lambda-consumer.yaml", {**LAMBDA_BASE, "GateStore": "memory"}, False),
        ("ecs-worker.yaml", ECS_BASE, True),  # KCL: on by default
        ("ecs-worker.yaml", {**ECS_BASE, "GateStore": "memory"}, False),
        ("ecs-worker.yaml", {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp"}, False),
        (
            "ecs-worker.yaml",
            {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp", "GateStore": "dynamodb"},
            True,
        ),
    ],
)
def test_the_gate_table_is_created_when_nothing_names_one(
    template: str, parameters: dict[str, Any], created: bool, templates: Templates
) -> None:
    evaluated = evaluate(templates[template], parameters)
    assert ("GateTable" in evaluated.resources) == created
    expected = "Ref:GateTable" if created else parameters.get("GateTableName", "")
    assert evaluated.outputs["GateTableName"] == expected


DEDUPE_CASES = [
    ("lambda-consumer.yaml", LAMBDA_BASE),
    ("lambda-consumer.yaml", {**LAMBDA_BASE, "GateStore": "memory"}),
    ("ecs-worker.yaml", ECS_BASE),
    ("ecs-worker.yaml", {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "cp"}),
]


@pytest.mark.parametrize(("template", "parameters"), DEDUPE_CASES)
@pytest.mark.parametrize("named", [False, True], ids=["default", "named"])
def test_the_dedupe_table_is_created_when_nothing_names_one(
    template: str, parameters: dict[str, Any], named: bool, templates: Templates
) -> None:
    """By default the Lambda and ECS templates create the de-duplication table and point
    QLDBSTREAM_DEDUPE_STORE at it (so de-duplication and late flags hold across containers, tasks and
    restarts, never memory); a DedupeTableName is used as it is and no table is created."""
    if named:
        parameters = {**parameters, "DedupeTableName": "shared-dedupe"}
    evaluated = evaluate(templates[template], parameters)
    table = "shared-dedupe" if named else "Ref:DedupeTable"
    arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/shared-dedupe" if named else "GetAtt:DedupeTable.Arn"
    assert ("DedupeTable" in evaluated.resources) == (not named)
    assert [k for k, r in evaluated.of_type("AWS::DynamoDB::Table").items() if "Dedupe" in k] == (
        [] if named else ["DedupeTable"]
    )
    assert runtime_environment(evaluated)["QLDBSTREAM_DEDUPE_STORE"] == f"dynamodb:{table}"
    assert evaluated.outputs["DedupeTableName"] == table
    role = "ExecutionRole" if template == "lambda-consumer.yaml" else "TaskRole"
    statements = evaluated.resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (dedupe,) = [st for st in statements if st.get("Sid") == "DedupeTable"]
    assert dedupe["Resource"] == arn


@pytest.mark.parametrize(("template", "parameters"), DEDUPE_CASES)
def test_dedupe_table_has_the_stores_schema(
    template: str, parameters: dict[str, Any], templates: Templates
) -> None:
    """The de-duplication table the runtime templates create is what DynamoDBDedupeStore.create_table
    creates (key pk, TTL on ttl, on demand) and what dynamodb-tables.yaml creates, kept like the gate
    table (backups, encryption, retained)."""
    client = RecordingDynamoDB()
    DynamoDBDedupeStore.create_table(client, "t", sleep=lambda _: None)  # type: ignore[arg-type]
    resource = evaluate(templates[template], parameters).resources["DedupeTable"]
    table = resource["Properties"]
    assert "TableName" not in table  # generated: a replacement never collides with the retained table
    assert table["KeySchema"] == client.created["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == client.created["AttributeDefinitions"]
    assert "GlobalSecondaryIndexes" not in table and "GlobalSecondaryIndexes" not in client.created
    assert table["BillingMode"] == client.created["BillingMode"] == "PAY_PER_REQUEST"
    assert client.ttl == {"Enabled": True, "AttributeName": "ttl"} == table["TimeToLiveSpecification"]
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": False}
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    shared = evaluate(templates["dynamodb-tables.yaml"]).resources["DedupeTable"]["Properties"]
    assert {k: v for k, v in shared.items() if k != "TableName"} == table
    managed = evaluate(
        templates[template],
        {**parameters, "DedupeTablePointInTimeRecovery": "false", "DedupeTableEncryption": "AWS_MANAGED"},
    ).resources["DedupeTable"]["Properties"]
    assert managed["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": False}
    assert managed["SSESpecification"] == {"SSEEnabled": True}


@pytest.mark.parametrize(
    ("runtime", "module"), [("kcl", "qldbstream.cli.kcl"), ("standalone", "qldbstream.cli.run")]
)
def test_the_container_command_parses(runtime: str, module: str, templates: Templates) -> None:
    """EntryPoint + Command are a valid `qldbstream <command>` line, flags included."""
    import argparse
    import importlib

    params = {**ECS_BASE, "Runtime": runtime, "CheckpointTableName": "cp", "KclMetricsLevel": "SUMMARY"}
    container = evaluate(templates["ecs-worker.yaml"], params).resources["TaskDefinition"]["Properties"][
        "ContainerDefinitions"
    ][0]
    assert container["EntryPoint"] == ["qldbstream"]
    parser = argparse.ArgumentParser(prog="qldbstream")
    importlib.import_module(module).register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["Command"])
    assert args.command == container["Command"][0]
    if runtime == "kcl":
        assert args.metrics_level == "SUMMARY"


def test_the_cli_offers_the_worker_commands() -> None:
    """`qldbstream run` and `qldbstream kcl` are the containers' commands: the CLI must register them."""
    from qldbstream.cli import command as cli

    assert {"run", "kcl"} <= set(cli.COMMANDS), f"qldbstream.cli.command.COMMANDS is {cli.COMMANDS}"


# --- queues, streams, keys -------------------------------------------------------------------------


def test_every_queue_keeps_14_days_and_is_encrypted(templates: Templates) -> None:
    queues = 0
    for name, template in templates.items():
        for logical, resource in template["Resources"].items():
            if resource["Type"] == "AWS::SQS::Queue":
                queues += 1
                props = resource["Properties"]
                assert props["MessageRetentionPeriod"] == 1209600, (name, logical)
                assert "KmsMasterKeyId" in props, (name, logical)
    assert queues == 3  # the DLQ, its parking queue, the Lambda on-failure queue
    dlq = evaluate(templates["dlq.yaml"]).resources["DeadLetterQueue"]["Properties"]
    assert dlq["KmsMasterKeyId"] == "alias/aws/sqs" and "RedrivePolicy" not in dlq
    parked = evaluate(templates["dlq.yaml"], {"MaxReceiveCount": 5}).resources["DeadLetterQueue"][
        "Properties"
    ]
    assert parked["RedrivePolicy"] == {
        "deadLetterTargetArn": "GetAtt:ParkingQueue.Arn",
        "maxReceiveCount": "5",
    }


def test_kinesis_stream_encryption_and_capacity(templates: Templates) -> None:
    template = templates["kinesis-stream.yaml"]
    on_demand = evaluate(template).resources["Stream"]["Properties"]
    assert on_demand["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert on_demand["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"} and "ShardCount" not in on_demand
    assert on_demand["RetentionPeriodHours"] == "168"
    table = evaluate(
        template,
        {
            "StreamMode": "PROVISIONED",
            "ExpectedTransactionsPerSecond": "2500",
            "AverageRecordsPerTransaction": "3",
        },
    )
    assert table.resources["Stream"]["Properties"]["ShardCount"] == 8  # ceil(7500 / 1000)
    explicit = evaluate(template, {"StreamMode": "PROVISIONED", "ShardCount": 3})
    assert explicit.resources["Stream"]["Properties"]["ShardCount"] == "3"
    created = evaluate(template, {"KmsKey": "create"})
    assert created.resources["Stream"]["Properties"]["StreamEncryption"]["KeyId"] == "GetAtt:StreamKey.Arn"
    assert created.resources["StreamKey"]["Properties"]["EnableKeyRotation"] is True
    assert failed_rules(template, {"ShardCount": 2})  # ShardCount with ON_DEMAND is refused
    consumer = evaluate(template, {"EnhancedFanOutConsumerName": "qldbstream"})
    assert consumer.outputs["ConsumerArn"] == "GetAtt:Consumer.ConsumerARN"


def test_shard_count_table_is_the_seeds_rule(templates: Templates) -> None:
    template = templates["kinesis-stream.yaml"]
    assert template["Mappings"]["ShardCountTable"] == shard_count.shard_table()
    params = template["Parameters"]
    assert params["ExpectedTransactionsPerSecond"]["AllowedValues"] == [
        str(t) for t in shard_count.TPS_VALUES
    ]
    assert params["AverageRecordsPerTransaction"]["AllowedValues"] == [
        str(r) for r in shard_count.RECORDS_PER_TX_VALUES
    ]
    for tps, row in template["Mappings"]["ShardCountTable"].items():
        for records, shards in row.items():
            assert shards == max(1, -(-int(tps) * int(records) // 1000))


def test_shard_count_helper_is_exact() -> None:
    assert shard_count.shard_count(1000, 1) == 1
    assert shard_count.shard_count(1001, 1) == 2
    assert shard_count.shard_count("333.4", 3) == 2  # 1000.2 records/s
    assert shard_count.shard_count("0.1", "0.1") == 1
    assert shard_count.shard_count(730, "3.2") == 3
    with pytest.raises(ValueError, match="positive"):
        shard_count.shard_count(0, 3)
    assert shard_count.main(["--tps", "2500", "--records-per-tx", "3"]) == 0


def test_sns_topic_is_encrypted_with_a_key_cloudwatch_may_use(templates: Templates) -> None:
    monitoring = evaluate(templates["monitoring.yaml"], {"KinesisStreamName": "s", "DlqQueueName": "q"})
    topic = monitoring.resources["OpsTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == "GetAtt:OpsTopicKey.Arn"
    key_policy = monitoring.resources["OpsTopicKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(st["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for st in key_policy)


# --- DynamoDB: the code's own create_table is the oracle ---------------------------------------------


class RecordingDynamoDB:
    """Records create_table / update_time_to_live; the table is ACTIVE at once, TTL off."""

    def __init__(self) -> None:
        self.created: dict[str, Any] = {}
        self.ttl: dict[str, Any] | None = None

    def create_table(self, **kwargs: Any) -> None:
        self.created = kwargs

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"TableStatus": "ACTIVE"}}

    def describe_time_to_live(self, TableName: str) -> dict[str, Any]:
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}

    def update_time_to_live(self, TableName: str, TimeToLiveSpecification: dict[str, Any]) -> None:
        self.ttl = TimeToLiveSpecification


@pytest.mark.parametrize(
    ("store", "logical", "ttl"),
    [(DynamoDBDedupeStore, "DedupeTable", "ttl"), (DynamoDBCheckpointStore, "CheckpointTable", None)],
)
def test_tables_have_the_stores_key_schema(
    store: Any, logical: str, ttl: str | None, templates: Templates
) -> None:
    client = RecordingDynamoDB()
    store.create_table(client, "t", sleep=lambda _: None)
    table = evaluate(templates["dynamodb-tables.yaml"], {"CreateCheckpointTable": "true"}).resources[logical][
        "Properties"
    ]
    assert table["KeySchema"] == client.created["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(
        client.created["AttributeDefinitions"], key=str
    )
    assert table["BillingMode"] == client.created["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    if ttl is None:
        assert client.ttl is None and "TimeToLiveSpecification" not in table
    else:
        assert client.ttl == {"Enabled": True, "AttributeName": ttl} == table["TimeToLiveSpecification"]


@pytest.mark.parametrize(
    ("template", "parameters"),
    [
        ("lambda-consumer.yaml", LAMBDA_BASE),
        ("ecs-worker.yaml", ECS_BASE),
        (
            "ecs-worker.yaml",
            {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "c", "GateStore": "dynamodb"},
        ),
    ],
)
def test_gate_table_has_the_stores_schema(
    template: str, parameters: dict[str, Any], templates: Templates
) -> None:
    """The gate table the runtime templates create is what DynamoDBGateStore.create_table creates (keys,
    the parked-by-time index, TTL), kept like the other tables (backups, encryption, retained)."""
    client = RecordingDynamoDB()
    DynamoDBGateStore.create_table(client, "t", sleep=lambda _: None)  # type: ignore[arg-type]
    resource = evaluate(templates[template], parameters).resources["GateTable"]
    table = resource["Properties"]
    assert "TableName" not in table  # generated: a replacement never collides with the retained table
    assert table["KeySchema"] == client.created["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(
        client.created["AttributeDefinitions"], key=str
    )
    assert table["GlobalSecondaryIndexes"] == client.created["GlobalSecondaryIndexes"]
    assert table["GlobalSecondaryIndexes"][0]["IndexName"] == EXPIRY_INDEX
    assert table["BillingMode"] == client.created["BillingMode"] == "PAY_PER_REQUEST"
    assert client.ttl == {"Enabled": True, "AttributeName": "ttl"} == table["TimeToLiveSpecification"]
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": False}  # DynamoDB-owned key, as dynamodb-tables.yaml
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    managed = evaluate(
        templates[template],
        {**parameters, "GateTablePointInTimeRecovery": "false", "GateTableEncryption": "AWS_MANAGED"},
    ).resources["GateTable"]["Properties"]
    assert managed["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": False}
    assert managed["SSESpecification"] == {"SSEEnabled": True}


def test_gate_max_wait_stays_well_inside_the_gate_items_ttl(templates: Templates) -> None:
    """A parked item that expires before its record is dead-lettered is lost without a dead letter
    (qldbstream.io.gate_dynamodb): the largest wait a template accepts leaves the expiry query as
    long again to drain."""
    for name in ("lambda-consumer.yaml", "ecs-worker.yaml", "main.yaml"):
        spec = templates[name]["Parameters"]["GateMaxWaitSeconds"]
        assert 2 * int(spec["MaxValue"]) <= DEFAULT_TTL, name
        assert float(spec["Default"]) == Settings().gate_max_wait_seconds, name


#: What the KCL 3.1.3 MultiLangDaemon sends when it creates its tables itself (recorded against moto,
#: docs/deploy.md): the template creates the same, so the daemon neither creates nor alters them.
KCL_CREATES = {
    "LeaseTable": {
        "KeySchema": [{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        "index": {
            "IndexName": "LeaseOwnerToLeaseKeyIndex",
            "KeySchema": [
                {"AttributeName": "leaseOwner", "KeyType": "HASH"},
                {"AttributeName": "leaseKey", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
    },
    "WorkerMetricStatsTable": {"KeySchema": [{"AttributeName": "wid", "KeyType": "HASH"}]},
    "CoordinatorStateTable": {"KeySchema": [{"AttributeName": "key", "KeyType": "HASH"}]},
}


def test_kcl_tables_are_the_ones_kcl_would_create(templates: Templates) -> None:
    worker = evaluate(templates["ecs-worker.yaml"], {**ECS_BASE, "ApplicationName": "ledger-app"})
    names = {}
    for logical, expected in KCL_CREATES.items():
        props = worker.resources[logical]["Properties"]
        names[logical] = props["TableName"]
        assert props["KeySchema"] == expected["KeySchema"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        if "index" in expected:
            assert props["GlobalSecondaryIndexes"] == [expected["index"]]
    assert names == {
        "LeaseTable": "ledger-app",
        "WorkerMetricStatsTable": "ledger-app-WorkerMetricStats",
        "CoordinatorStateTable": "ledger-app-CoordinatorState",
    }
    standalone = evaluate(
        templates["ecs-worker.yaml"], {**ECS_BASE, "Runtime": "standalone", "CheckpointTableName": "c"}
    )
    assert not set(KCL_CREATES) & set(standalone.resources)
    assert "ScalableTarget" not in standalone.resources


# --- monitoring -------------------------------------------------------------------------------------


def _package_trees(index: CodeIndex) -> list[tuple[Path, ast.Module]]:
    return [(m.path, m.tree) for name, m in index.modules.items() if name.split(".")[0] == "qldbstream"]


def _code_metrics(index: CodeIndex) -> dict[str, set[frozenset[str]]]:
    """metric name -> the dimension sets the package records it with (``metrics.incr("x", dim=...)``)."""
    out: dict[str, set[frozenset[str]]] = {}
    for _path, tree in _package_trees(index):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("incr", "gauge", "observe")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                out.setdefault(node.args[0].value, set()).add(
                    frozenset(k.arg for k in node.keywords if k.arg)
                )
    return out


def _dashboard_metrics(body: dict[str, Any], namespace: str) -> set[tuple[str, frozenset[str]]]:
    """(metric, dimension names) of every qldbstream metric a dashboard widget shows."""
    out: set[tuple[str, frozenset[str]]] = set()
    for widget in body["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            if isinstance(line[0], dict):
                m = re.search(r"\{([^}]*)\} MetricName=\"(\w+)\"", line[0]["expression"])
                assert m, line
                ns, *dims = [p.strip() for p in m.group(1).split(",")]
                if ns == namespace:
                    out.add((m.group(2), frozenset(dims)))
            elif line[0] == namespace:
                plain = [x for x in line if not isinstance(x, dict)]
                out.add((plain[1], frozenset(plain[2::2])))
    return out


def test_dashboard_and_alarms_use_the_metrics_the_code_records(
    templates: Templates, code_index: CodeIndex
) -> None:
    monitoring = templates["monitoring.yaml"]
    assert monitoring["Parameters"]["MetricsNamespace"]["Default"] == qmetrics.NAMESPACE
    evaluated = evaluate(monitoring, {"KinesisStreamName": "s", "DlqQueueName": "q", "FunctionName": "f"})
    body = json.loads(evaluated.resources["Dashboard"]["Properties"]["DashboardBody"])
    shown = _dashboard_metrics(body, qmetrics.NAMESPACE)
    recorded = _code_metrics(code_index)
    for name, dims in shown:
        assert name in recorded, f"the dashboard shows {name}, which the code never records"
        assert dims in recorded[name], (
            f"{name}: the dashboard uses dimensions {sorted(dims)}, the code {recorded[name]}"
        )
    wanted = {
        "records_in",
        "records_verified",
        "verification_failures",
        "dlq_writes",
        "retries",
        "breaker_open",
        "handler_latency",
        "batch_size",
        "dedupe_hits",
        "late_revisions",
    }
    assert wanted <= {name for name, _ in shown}
    insights = evaluated.resources["VerificationFailuresAlarm"]["Properties"]["Metrics"][0]["Expression"]
    assert insights == f'SELECT SUM(verification_failures) FROM SCHEMA("{qmetrics.NAMESPACE}", "check")'
    assert {frozenset({"check"})} == recorded["verification_failures"]
    assert frozenset() in recorded["dlq_write_failures"]


def test_emf_metrics_carry_no_static_dimensions(code_index: CodeIndex) -> None:
    """The dashboard's SEARCH schemas assume the dimensions the code passes and nothing else."""
    calls = 0
    for path, tree in _package_trees(code_index):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "EmfMetrics"
            ):
                calls += 1
                extra = [k.arg for k in node.keywords if k.arg not in ("namespace", "out")]
                assert not extra, (
                    f"{path}: EmfMetrics(...) adds static dimensions {extra}: update monitoring.yaml"
                )
    assert calls, "no EmfMetrics(...) in the package: how does the Lambda runtime publish metrics now?"


def test_alarms_notify_the_ops_topic_with_the_seeds_thresholds(templates: Templates) -> None:
    evaluated = evaluate(
        templates["monitoring.yaml"],
        {
            "KinesisStreamName": "s",
            "DlqQueueName": "q",
            "FunctionName": "f",
            "LedgerName": "l",
            "JournalStreamId": "id",
            "ParkingQueueName": "p",
            "OnFailureQueueName": "o",
        },
    )
    alarms = evaluated.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) == 12
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == ["Ref:OpsTopic"], name
    seed = alarms["SeedStreamLagAlarm"]["Properties"]
    assert (
        seed["Namespace"],
        seed["MetricName"],
        seed["Threshold"],
        seed["Period"],
        seed["EvaluationPeriods"],
    ) == ("QLDB/Streams", "StreamLag", "60000", 300, 2)
    low = alarms["LowThroughputAlarm"]["Properties"]
    assert (
        low["MetricName"],
        low["Threshold"],
        low["ComparisonOperator"],
        low["Period"],
        low["EvaluationPeriods"],
    ) == ("IncomingRecords", "100", "LessThanThreshold", 60, 3)
    errors = alarms["WriteErrorsAlarm"]["Properties"]
    assert errors["Threshold"] == "10" and errors["ComparisonOperator"] == "GreaterThanThreshold"
    dlq = alarms["DlqDepthAlarm"]["Properties"]
    assert (dlq["Namespace"], dlq["MetricName"], dlq["Dimensions"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        [{"Name": "QueueName", "Value": "q"}],
    )


def test_kcl_service_scales_on_stream_lag(templates: Templates) -> None:
    worker = evaluate(templates["ecs-worker.yaml"], ECS_BASE)
    high = worker.resources["LagHighAlarm"]["Properties"]
    assert (high["Namespace"], high["MetricName"], high["Statistic"]) == (
        "AWS/Kinesis",
        "GetRecords.IteratorAgeMilliseconds",
        "Maximum",
    )
    assert high["Threshold"] == "60000" and high["AlarmActions"] == ["Ref:ScaleOutPolicy"]
    assert worker.resources["LagLowAlarm"]["Properties"]["AlarmActions"] == ["Ref:ScaleInPolicy"]
    assert (
        worker.resources["ScalableTarget"]["Properties"]["ResourceId"]
        == "service/Ref:Cluster/GetAtt:Service.Name"
    )


# --- composition --------------------------------------------------------------------------------------


def test_nested_stacks_pass_parameters_and_read_outputs_that_exist(templates: Templates) -> None:
    main = templates["main.yaml"]
    children: dict[str, dict[str, Any]] = {}
    for logical, resource in main["Resources"].items():
        child = templates[Path(resource["Properties"]["TemplateURL"]).name]
        children[logical] = child
        passed = set(resource["Properties"].get("Parameters", {}))
        declared = set(child.get("Parameters", {}))
        assert passed <= declared, f"{logical}: unknown parameters {passed - declared}"
        required = {n for n, p in child.get("Parameters", {}).items() if "Default" not in p}
        assert required <= passed, f"{logical}: parameters without defaults not passed: {required - passed}"
    for match in re.finditer(r"'Fn::GetAtt': \['(\w+)', 'Outputs\.(\w+)'\]", str(main)):
        stack, output = match.groups()
        assert output in children[stack]["Outputs"], f"{stack} has no output {output}"


@pytest.mark.parametrize("gate", ["auto", "dynamodb", "memory"])
@pytest.mark.parametrize("runtime", ["kcl", "standalone"])
def test_main_passes_values_the_children_accept(gate: str, runtime: str, templates: Templates) -> None:
    """What main.yaml computes for a child's parameter is one of that child's AllowedValues; the gate
    store reaches each consumer as documented (auto: the function and the KCL on DynamoDB)."""
    main = templates["main.yaml"]
    evaluated = evaluate(
        main,
        {"DeployWorker": "true", "WorkerRuntime": runtime, "GateStore": gate, "Delivery": "chain-confirmed"},
    )
    for logical in ("Lambda", "Worker"):
        child = templates[Path(main["Resources"][logical]["Properties"]["TemplateURL"]).name]
        for name, value in evaluated.resources[logical]["Properties"]["Parameters"].items():
            allowed = child["Parameters"][name].get("AllowedValues")
            if allowed and not str(value).startswith(("GetAtt:", "Ref:")):
                assert str(value) in [str(v) for v in allowed], (logical, name, value)
    lam = evaluated.resources["Lambda"]["Properties"]["Parameters"]
    worker = evaluated.resources["Worker"]["Properties"]["Parameters"]
    assert lam["GateStore"] == ("memory" if gate == "memory" else "dynamodb")
    assert worker["GateStore"] == gate
    assert lam["Delivery"] == worker["Delivery"] == "chain-confirmed"
    assert "GateTableName" not in lam and "GateTableName" not in worker  # one table per consumer
    # One de-duplication table, the Tables stack's, shared by both: the consumers create none
    shared = "GetAtt:Tables.Outputs.DedupeTableName"
    assert lam["DedupeTableName"] == worker["DedupeTableName"] == shared
    for logical, params in (("Lambda", lam), ("Worker", worker)):
        child = templates[Path(main["Resources"][logical]["Properties"]["TemplateURL"]).name]
        given = {k: v for k, v in params.items() if k in child["Parameters"]}
        assert "DedupeTable" not in evaluate(child, given).resources, logical
    tables = evaluate(templates["dynamodb-tables.yaml"]).resources
    assert "DedupeTable" in tables
