"""The seed's event-processing workflow, shipped as an example: ``definition.json`` + task callables.

:func:`definition` loads the state machine with its substitutions (``FunctionArnPrefix``,
``SecurityAlertTopicArn``, ``ComplianceTableName``); :func:`build_tasks` binds the callables to an
:class:`ExampleServices`. The same ``definition.json`` deploys to Step Functions unchanged, with the
callables behind Lambda functions of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from qldbstream_handlers.workflow.definition import load_definition
from qldbstream_handlers.workflow.example.tasks import (
    DEFAULT_WEIGHT,
    RULE_WEIGHTS,
    ComplianceUnavailable,
    ExampleServices,
    build_tasks,
    fraud_score,
)

__all__ = [
    "DEFAULT_FUNCTION_ARN_PREFIX",
    "DEFAULT_WEIGHT",
    "RULE_WEIGHTS",
    "ComplianceUnavailable",
    "ExampleServices",
    "build_tasks",
    "definition",
    "definition_text",
    "fraud_score",
]

#: Where the task functions would live in AWS; locally they resolve by function name.
DEFAULT_FUNCTION_ARN_PREFIX = "arn:aws:lambda:us-east-1:123456789012:function:"


def definition_text() -> str:
    """The raw ``definition.json`` (with its ``${…}`` placeholders)."""
    return resources.files(__package__).joinpath("definition.json").read_text(encoding="utf-8")


def definition(
    security_alert_topic_arn: str,
    compliance_table_name: str,
    function_arn_prefix: str = DEFAULT_FUNCTION_ARN_PREFIX,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The example state machine with its placeholders filled in, validated."""
    subs = {
        "FunctionArnPrefix": function_arn_prefix,
        "SecurityAlertTopicArn": security_alert_topic_arn,
        "ComplianceTableName": compliance_table_name,
        **dict(extra or {}),
    }
    return load_definition(definition_text(), subs)
