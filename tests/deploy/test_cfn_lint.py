"""cfn-lint on every template: no errors and no warnings (the few suppressed ones say why, in place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ConfigMixIn, Match, Runner
from cfnlint.decode import decode, decode_str

from tests.deploy.cfn import TEMPLATES

ALL = sorted(TEMPLATES.glob("*.yaml"))
#: Checks suppressed in a template's Metadata, each with its reason next to it there.
EXPECTED_SUPPRESSIONS = {
    ("main.yaml", "W3002"),  # nested templates are local paths until `aws cloudformation package`
    ("qldb-stream.yaml", "E3710"),  # Amazon QLDB reached its end of support (2025-07-31)
    ("qldb-stream.yaml", "E1020"),  # cfn-lint's schema types KinesisConfiguration.StreamArn as an object
    ("lambda-consumer.yaml", "W1030"),  # empty CodeS3Bucket/Key defaults, guarded by the ZipNeedsCode rule
}


def test_every_template_is_linted() -> None:
    names = {p.name for p in ALL}
    assert {
        "kinesis-stream.yaml",
        "qldb-stream.yaml",
        "dlq.yaml",
        "dynamodb-tables.yaml",
        "lambda-consumer.yaml",
        "ecs-worker.yaml",
        "monitoring.yaml",
        "handler-policies.yaml",
        "main.yaml",
    } <= names


@pytest.fixture(scope="module")
def runner() -> Runner:
    """cfn-lint's rules, loaded once (that costs more than linting a file)."""
    return Runner(ConfigMixIn(regions=["us-east-1"]))


@pytest.fixture(scope="module")
def lint_results(runner: Runner) -> dict[str, list[Match]]:
    out: dict[str, list[Match]] = {}
    for path in ALL:
        template, errors = decode(str(path))
        out[path.name] = list(errors or []) if template is None else list(runner.validate_template(template))
    return out


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_cfn_lint_is_clean(path: Path, lint_results: dict[str, list[Match]]) -> None:
    matches = lint_results[path.name]
    report = "\n".join(f"{m.rule.id} {m.linenumber}:{m.columnnumber} {m.message}" for m in matches)
    assert matches == [], f"cfn-lint on {path.name}:\n{report}"


def test_suppressions_are_the_documented_ones(templates: dict[str, dict[str, Any]]) -> None:
    """A new ignore_checks entry must be added here too, with its reason: none slips in unnoticed."""
    found: set[tuple[str, str]] = set()
    for name, template in templates.items():
        nodes = [
            template.get("Metadata", {}),
            *(r.get("Metadata", {}) for r in template["Resources"].values()),
        ]
        for meta in nodes:
            for check in meta.get("cfn-lint", {}).get("config", {}).get("ignore_checks", []):
                found.add((name, check))
    assert found == EXPECTED_SUPPRESSIONS


def test_the_linter_would_report_an_error(runner: Runner) -> None:
    """The in-process run reports what the CLI would: a broken copy of a template fails."""
    text = (
        (TEMPLATES / "dlq.yaml")
        .read_text()
        .replace("MessageRetentionPeriod: 1209600", "MessageRetentionPeriod: 5")
    )
    template, errors = decode_str(text)
    assert template is not None and not errors
    matches = list(runner.validate_template(template))
    assert any(m.rule.id.startswith("E") and "5" in m.message for m in matches), matches
