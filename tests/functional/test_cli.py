"""The CLI as a new user meets it: help with examples, inspect, handlers, config, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qldbstream.cli.command import ORDER, build_parser, main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "qldb-real"


@pytest.mark.parametrize("command", ORDER)  # the contributed ones too (dev installs them)
def test_every_command_has_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"qldbstream {command}" in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ORDER)
    assert build_parser().prog == "qldbstream"


def test_inspect_shows_an_aggregate_with_its_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(FIXTURES / "simpledemo_7f20a42_streams_data1.json")]) == 0
    out = capsys.readouterr().out
    assert "KPL aggregate" in out and "V1 passed: magic and MD5 valid, 3 user records" in out
    assert out.count("verified") == 3
    assert 'recordType: "REVISION_DETAILS"' in out and "txTime: 2020-07-03T" in out


def test_inspect_json_and_a_failing_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(FIXTURES / "dmv_lambda_fixture.ion"), "--index", "1", "--json"]) == 1
    out = capsys.readouterr().out
    assert "FAILED V2" in out
    doc = json.loads(out[out.index("{") :])
    assert doc["payload"]["revision"]["data"]["FirstName"] == "Nova"
    assert doc["payload"]["revision"]["data"]["DOB"] == "1963-08-19"  # day precision kept, no time added
    assert main(["inspect", str(FIXTURES / "dmv_lambda_fixture.ion"), "--index", "9"]) == 2
    assert "has 2 Kinesis records" in capsys.readouterr().err


def test_handlers_lists_installed_and_active(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", "audit")
    assert main(["handlers", "--json", "--check"]) == 0
    rows = json.loads(capsys.readouterr().out)
    audit = next(r for r in rows if r["name"] == "audit")
    assert audit["active"] and audit["distribution"] == "qldbstream-handlers"
    assert audit["loaded"] == "AuditLogHandler"


def test_config_masks_secrets_and_rejects_bad_values(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLDBSTREAM_HANDLER_MASKING__HASH_KEY", "very-secret")
    monkeypatch.setenv("QLDBSTREAM_DLQ", "dir:/tmp/dlq")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["handler_settings"]["masking"]["hash_key"] == "****"
    assert shown["dlq"] == "dir:/tmp/dlq"
    monkeypatch.setenv("QLDBSTREAM_BATCH_MAX", "lots")
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "QLDBSTREAM_BATCH_MAX" in err[0] and "Traceback" not in err[0]
