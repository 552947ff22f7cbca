"""Configuration (environment and files), plugin discovery through entry points, the Router API
and the built-in audit handler running inside an app built from the environment alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qldbstream import Router
from qldbstream.api.handler import BatchItemError, HandlerContext
from qldbstream.app.assembly import App
from qldbstream.app.config import load_settings
from qldbstream.app.plugins import installed_plugins, load_handler, load_handlers
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError
from tests.support.streams import kinesis_records, simulation

router = Router("test_router")
calls: list[str] = []


@router.revision(table="Transactions", operation="insert")
def on_transaction(revision: RevisionDetails, ctx: HandlerContext) -> None:
    calls.append(revision.document_id)


def factory(settings: dict[str, str]) -> Router:
    if settings.get("level") not in ("low", "high"):
        raise ConfigurationError(f"level must be low or high, not {settings.get('level')!r}")
    return Router("factory")


def test_settings_from_the_environment() -> None:
    s = load_settings(
        {
            "QLDBSTREAM_HANDLERS": "audit, tests.functional.test_config_and_plugins:router",
            "QLDBSTREAM_LATE_POLICY": "deliver-late",
            "QLDBSTREAM_STOP_ON_FIRST_FAILURE": "false",
            "QLDBSTREAM_RETRY_MAX_ATTEMPTS": "7",
            "QLDBSTREAM_BREAKER_RECOVERY_SECONDS": "12.5",
            "QLDBSTREAM_START_POSITION": "AT_TIMESTAMP",
            "QLDBSTREAM_START_TIME": "2024-03-01T00:00:00Z",
            "QLDBSTREAM_HANDLER_AUDIT__PATH": "/tmp/audit.jsonl",
            "QLDBSTREAM_HANDLER_FRAUD__API_TOKEN": "s3cr3t",
            "AWS_REGION": "eu-west-1",
            "UNRELATED": "ignored",
        }
    )
    assert s.handlers == ("audit", "tests.functional.test_config_and_plugins:router")
    assert s.late_policy is LatePolicy.DELIVER_LATE and s.stop_on_first_failure is False
    assert s.retry_max_attempts == 7 and s.breaker_recovery_seconds == 12.5
    assert s.start_time == datetime(2024, 3, 1, tzinfo=UTC)
    assert s.region == "eu-west-1"
    assert s.handler_settings == {"audit": {"path": "/tmp/audit.jsonl"}, "fraud": {"api_token": "s3cr3t"}}
    masked = s.masked()
    assert masked["handler_settings"]["fraud"]["api_token"] == "****"
    assert masked["handler_settings"]["audit"]["path"] == "/tmp/audit.jsonl"
    assert s.pipeline_settings().retry.max_attempts == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QLDBSTREAM_LATE_POLCY": "drop"}, "unknown setting QLDBSTREAM_LATE_POLCY"),
        ({"QLDBSTREAM_LATE_POLICY": "sometimes"}, "late_policy: invalid value 'sometimes'"),
        ({"QLDBSTREAM_RETRY_MAX_ATTEMPTS": "many"}, "retry_max_attempts: invalid value 'many'"),
        ({"QLDBSTREAM_STOP_ON_FIRST_FAILURE": "maybe"}, "expected true or false"),
        ({"QLDBSTREAM_START_TIME": "2024-03-01T00:00:00"}, "needs a time zone"),
        ({"QLDBSTREAM_START_POSITION": "AT_TIMESTAMP"}, "needs start_time"),
        ({"QLDBSTREAM_DEDUPE_STORE": "redis"}, "not 'memory' or 'dynamodb:<table>'"),
        ({"QLDBSTREAM_DLQ": "ftp://x"}, "is not 'sqs:<queue url>' or 'dir:<path>'"),
    ],
)
def test_bad_settings_are_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_settings_from_a_file_with_the_environment_on_top(tmp_path: Path) -> None:
    toml = tmp_path / "qldbstream.toml"
    toml.write_text(
        'late_policy = "reorder"\nretry_max_attempts = 3\n'
        '[handlers]\nactive = ["audit"]\n[handlers.audit]\npath = "audit.jsonl"\n'
    )
    s = load_settings({"QLDBSTREAM_RETRY_MAX_ATTEMPTS": "4"}, str(toml))
    assert s.late_policy is LatePolicy.REORDER and s.retry_max_attempts == 4
    assert s.handlers == ("audit",) and s.handler_settings == {"audit": {"path": "audit.jsonl"}}
    as_json = tmp_path / "qldbstream.json"
    as_json.write_text(json.dumps({"handlers": ["audit"], "late-policy": "drop"}))
    assert load_settings({}, str(as_json)).handlers == ("audit",)
    (tmp_path / "bad.toml").write_text("lat_policy = 'drop'\n")
    with pytest.raises(ConfigurationError, match="unknown setting 'lat_policy'"):
        load_settings({}, str(tmp_path / "bad.toml"))


def test_plugins_are_found_through_entry_points_and_paths() -> None:
    assert "audit" in {p.name for p in installed_plugins()}
    audit = load_handler("audit", {"path": "x.jsonl"})
    assert audit.name == "audit"
    assert load_handler("tests.functional.test_config_and_plugins:router") is router
    assert (
        load_handler("tests.functional.test_config_and_plugins:factory", {"level": "low"}).name == "factory"
    )
    with pytest.raises(ConfigurationError, match=r"unknown handler plugin 'fruad' \(installed: .*audit"):
        load_handler("fruad")
    with pytest.raises(ConfigurationError, match="level must be low or high"):
        load_handler("tests.functional.test_config_and_plugins:factory", {"level": "mid"})
    with pytest.raises(ConfigurationError, match="takes no settings"):
        load_handler("tests.functional.test_config_and_plugins:router", {"x": "1"})
    with pytest.raises(ConfigurationError, match="has no nothing_here"):
        load_handler("tests.functional.test_config_and_plugins:nothing_here")
    with pytest.raises(ConfigurationError, match="audit handler: unknown settings"):
        load_handler("audit", {"pth": "x"})
    with pytest.raises(ConfigurationError, match="not active"):
        load_handlers(("audit",), {"audit": {}, "fruad": {"x": "1"}})


def test_router_decorators_filters_and_explicit_registration() -> None:
    r = Router("r")
    seen: list[str] = []

    def explicit(revision: RevisionDetails, ctx: HandlerContext) -> None:
        seen.append(f"explicit:{revision.version}")

    decorated = r.revision(operation=("update",), predicate=lambda rev: rev.version > 1)(explicit)
    assert decorated is explicit
    r.add_revision_handler(explicit, table="Accounts", operation="insert", name="accounts-insert")
    with pytest.raises(ValueError, match="unknown operation"):
        r.add_revision_handler(explicit, operation="upsert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="simple identifier"):
        Router("not a name")
    blocks: list[int] = []
    r.block_summary(lambda b, ctx: blocks.append(b.sequence_no))
    controls: list[str] = []
    r.control(control_type="CREATED")(lambda c, ctx: controls.append(c.control_record_type))

    sim = simulation(30)
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode_bytes

    records = [
        decode_bytes(u.data, u.position)
        for kr in next(iter(kinesis_records(sim).values()))
        for u in deaggregate(kr)
    ]
    ctx = HandlerContext(handler="r", shard_id="s")
    r.handle_batch([x for x in records if r.wants(x)], ctx)
    updates = [x for x in sim.ledger.revisions if x.op == "update" and x.version > 1]
    account_inserts = [x for x in sim.ledger.revisions if x.table == "Accounts" and x.version == 0]
    assert len(seen) == len(updates) + len(account_inserts)
    assert len(blocks) == len(sim.journal.blocks) and controls == ["CREATED"]


def test_router_names_the_failing_record() -> None:
    r = Router("failing")
    r.add_control_handler(lambda c, ctx: (_ for _ in ()).throw(KeyError("boom")))
    sim = simulation(5)
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode_bytes

    records = [
        decode_bytes(u.data, u.position)
        for kr in next(iter(kinesis_records(sim).values()))
        for u in deaggregate(kr)
    ]
    wanted = [x for x in records if r.wants(x)]
    with pytest.raises(BatchItemError) as info:
        r.handle_batch(wanted, HandlerContext(handler="failing", shard_id="s"))
    assert info.value.index == 0 and isinstance(info.value.cause, KeyError)


def test_audit_handler_from_the_environment_alone(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    app = App.from_env(
        {
            "QLDBSTREAM_HANDLERS": "audit",
            "QLDBSTREAM_HANDLER_AUDIT__PATH": str(audit_file),
            "QLDBSTREAM_HANDLER_AUDIT__TABLES": "Transactions,Accounts",
            "QLDBSTREAM_DLQ": f"dir:{tmp_path / 'dlq'}",
        }
    )
    sim = simulation(40, duplicates=0.3)
    pipeline = app.pipeline()
    for shard, records in kinesis_records(sim).items():
        for start in range(0, len(records), 5):
            result = pipeline.process(shard, records[start : start + 5])
            assert result.first_unfinished is None
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    expected = {
        f"{r.document_id}#{r.version}"
        for r in sim.ledger.revisions
        if r.table in ("Transactions", "Accounts")
    }
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys))  # duplicates were delivered, but each revision written once
    assert set(keys) == expected
    assert all(line["verified"] and len(line["revisionHash"]) == 44 for line in lines)
    app.close()
