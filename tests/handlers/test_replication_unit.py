"""The replication handler's pure parts: settings, put rounds, KPL re-aggregation, health, lanes."""

from __future__ import annotations

import pytest
from qldbstream_handlers.replication import (
    Lane,
    Mode,
    Outgoing,
    RecentKeys,
    ReplicationHandler,
    ReplicationSettings,
    ShardMap,
    TargetHealth,
    plan_rounds,
)

from qldbstream.api.handler import HandlerContext
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import JournalRecord, RecordType, RevisionDetails, decode
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.records import KinesisRecord
from tests.support.streams import kinesis_records, simulation

BASE = {"targets": "west,eu", "west_stream": "dr-west", "eu_stream": "dr-eu"}


def journal_records(transactions: int = 30) -> list[JournalRecord]:
    out = []
    for records in kinesis_records(simulation(transactions, aggregate=True)).values():
        for kr in records:
            out.extend(decode(user) for user in deaggregate(kr))
    return out


# -- settings ---------------------------------------------------------------------------------------


def test_settings_defaults_and_targets_in_priority_order() -> None:
    s = ReplicationSettings.parse({**BASE, "west_region": "us-west-2", "eu_endpoint": "http://127.0.0.1:1"})
    assert [t.name for t in s.targets] == ["west", "eu"]
    assert s.targets[0].region == "us-west-2" and s.targets[0].endpoint is None
    assert s.targets[1].endpoint == "http://127.0.0.1:1"
    assert s.mode is Mode.FANOUT and s.record_types == {RecordType.REVISION_DETAILS}
    assert (s.health_check_interval, s.failover_threshold, s.auto_failover) == (60.0, 3, True)
    assert s.aggregate is False and s.tables is None


def test_settings_parse_every_option() -> None:
    s = ReplicationSettings.parse(
        {
            **BASE,
            "mode": "failover",
            "records": "revision_details, BLOCK_SUMMARY,control",
            "tables": "Accounts,Transactions",
            "aggregate": "true",
            "health_check_interval": "5",
            "failover_threshold": "2",
            "recovery_threshold": "3",
            "auto_failover": "false",
            "failback": "no",
            "put_attempts": "2",
            "sent_cache_size": "0",
        }
    )
    assert s.mode is Mode.FAILOVER and len(s.record_types) == 3
    assert s.tables == {"Accounts", "Transactions"} and s.aggregate
    assert (s.health_check_interval, s.failover_threshold, s.recovery_threshold) == (5.0, 2, 3)
    assert not s.auto_failover and not s.failback and s.put_attempts == 2 and s.sent_cache_size == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "'targets' must name at least one target"),
        ({"targets": "West"}, "lower-case letters and digits"),
        ({"targets": "a,a", "a_stream": "s"}, "named twice"),
        ({"targets": "a"}, "needs a_stream"),
        ({**BASE, "b_stream": "x"}, r"unknown settings \['b_stream'\]"),
        ({**BASE, "mode": "mirror"}, "fanout or failover"),
        ({**BASE, "records": "journal"}, "not revision_details"),
        ({**BASE, "failover_threshold": "0"}, "at least 1"),
        ({**BASE, "aggregate": "maybe"}, "true or false"),
        ({**BASE, "health_check_interval": "soon"}, "must be a number"),
    ],
)
def test_bad_settings_fail_at_start_up(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ReplicationHandler(settings)


# -- rounds -----------------------------------------------------------------------------------------


def item(key: str, pk: str, data: bytes = b"x") -> Outgoing:
    return Outgoing(key, pk, data)


def test_rounds_hold_at_most_one_entry_per_partition_key_and_keep_stream_order() -> None:
    items = [
        item("a0", "a"),
        item("b0", "b"),
        item("a1", "a"),
        item("a2", "a"),
        item("c0", "c"),
        item("b1", "b"),
    ]
    rounds = plan_rounds(items)
    assert [r.keys for r in rounds] == [("a0", "b0", "c0"), ("a1", "b1"), ("a2",)]
    for r in rounds:
        keys = [e.partition_key for e in r.entries]
        assert len(keys) == len(set(keys))


def test_aggregated_rounds_round_trip_and_route_each_user_record_to_its_own_shard() -> None:
    records = [r for r in journal_records() if isinstance(r, RevisionDetails)]
    items = [Outgoing(f"rev#{r.document_id}#{r.version}", r.document_id, r.raw) for r in records]
    shard_map = ShardMap.uniform(4)
    rounds = plan_rounds(items, shard_map=shard_map, max_record_bytes=4096)
    assert len(rounds) > 1  # small aggregates: several per shard
    got: list[bytes] = []
    for r in rounds:
        shards = [shard_map.shard_for(e.partition_key) for e in r.entries]
        assert len(shards) == len(set(shards))  # one aggregate per shard per round
        for entry in r.entries:
            assert entry.data[:4] == KPL_MAGIC and entry.size <= 4096
            users = deaggregate(KinesisRecord(entry.data, "1", entry.partition_key))
            assert {shard_map.shard_for(u.partition_key) for u in users} == {
                shard_map.shard_for(entry.partition_key)
            }
            got.extend(u.data for u in users)
    assert sorted(got) == sorted(i.data for i in items)
    # per document, versions keep their order across rounds
    order: dict[str, list[int]] = {}
    for data in got:
        rec = decode(deaggregate(KinesisRecord(data, "1", "pk"))[0])
        assert isinstance(rec, RevisionDetails)
        order.setdefault(rec.document_id, []).append(rec.version)
    assert all(v == sorted(v) for v in order.values())


def test_shard_map_uses_the_kinesis_hash_rule() -> None:
    from qldbstream_tools.simulate import shard_for

    shard_map = ShardMap.uniform(5)
    for pk in ("a", "doc-1", "Kb3Xf0aS1Bn2yQ7w9UcD4e", "x" * 200):
        assert shard_map.shard_for(pk) == f"shardId-{shard_for(pk, 5):012d}"


# -- health -----------------------------------------------------------------------------------------


def test_health_threshold_recovery_and_probe_interval() -> None:
    changes: list[bool] = []
    h = TargetHealth(
        "west", threshold=3, recovery_threshold=2, interval=60, on_change=lambda x: changes.append(x.healthy)
    )
    assert h.check_due(0.0)
    h.record_failure(1.0, "boom")
    h.record_failure(2.0, "boom")
    h.record_success(3.0)  # a success in between resets the count
    h.record_failure(4.0, "boom")
    h.record_failure(5.0, "boom")
    assert h.healthy and h.failures == 2
    h.record_failure(6.0, "down")
    assert not h.healthy and changes == [False] and h.last_error == "down"
    assert not h.check_due(65.9) and h.next_check_in(36.0) == pytest.approx(30.0)
    assert h.check_due(66.0)
    h.record_success(66.0, probe=True)
    assert not h.healthy  # needs two probes in a row
    h.record_success(126.0, probe=True)
    assert h.healthy and changes == [False, True]


def test_recent_keys_forget_the_oldest() -> None:
    keys = RecentKeys(2)
    keys.add(["a", "b"])
    keys.add(["c"])
    assert "a" not in keys and "b" in keys and "c" in keys and len(keys) == 2
    none = RecentKeys(0)
    none.add(["a"])
    assert "a" not in none


def test_lane_keeps_first_place_skips_written_keys_and_drops_released_shards() -> None:
    lane = Lane("west", 10)
    assert lane.add(Outgoing("k1", "a", b"1", "shard-1"))
    assert lane.add(Outgoing("k2", "b", b"2", "shard-2"))
    assert lane.add(Outgoing("k1", "a", b"1", "shard-1"))  # redelivered: same place
    assert list(lane.pending) == ["k1", "k2"]
    lane.done(["k1"])
    assert not lane.add(Outgoing("k1", "a", b"1", "shard-1"))
    assert lane.drop_shard("shard-2") == 1 and not lane.pending


# -- what the handler takes ------------------------------------------------------------------------


def test_wants_and_buffers_by_record_type_and_table_with_document_id_partition_keys() -> None:
    records = journal_records()
    handler = ReplicationHandler({**BASE, "tables": "Transactions"})
    wanted = [r for r in records if handler.wants(r)]
    assert wanted and all(isinstance(r, RevisionDetails) and r.table_name == "Transactions" for r in wanted)
    handler.handle_batch(wanted, HandlerContext("replication", "shardId-000000000000"))
    for lane in handler.lanes.values():
        assert [o.data for o in lane.pending.values()] == [r.raw for r in wanted]
        assert [o.partition_key for o in lane.pending.values()] == [r.document_id for r in wanted]  # type: ignore[attr-defined]
    everything = ReplicationHandler(
        {**BASE, "records": "revision_details,block_summary,control", "mode": "failover"}
    )
    assert all(everything.wants(r) for r in records) and list(everything.lanes) == ["active"]


# -- dr-check's stream specs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ledger-dr", ("ledger-dr", "eu-west-1", "http://default")),
        ("us-west-2:ledger-dr", ("ledger-dr", "us-west-2", "http://default")),
        ("us-west-2:ledger-dr@http://127.0.0.1:4568", ("ledger-dr", "us-west-2", "http://127.0.0.1:4568")),
        (
            "s@https://kinesis.eu-west-1.amazonaws.com",
            ("s", "eu-west-1", "https://kinesis.eu-west-1.amazonaws.com"),
        ),
    ],
)
def test_dr_check_stream_specs(text: str, expected: tuple[str, str, str]) -> None:
    from qldbstream.cli.dr_check import parse_stream_spec

    spec = parse_stream_spec(text, "eu-west-1", "http://default")
    assert (spec.stream, spec.region, spec.endpoint) == expected


def test_a_target_without_a_region_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from qldbstream.api.handler import SetupContext
    from qldbstream.api.metrics import NullMetrics

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    handler = ReplicationHandler({"targets": "west", "west_stream": "dr"})
    with pytest.raises(ConfigurationError, match=r"replication target west .*region"):
        handler.setup(SetupContext({}, logging.getLogger("test"), NullMetrics()))
