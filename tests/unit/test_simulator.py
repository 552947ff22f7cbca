"""The ledger simulator: determinism, record structure, hashes, delivery knobs, tampering, verdicts."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType, TimestampPrecision
from amazon.ion.simple_types import IonPyNull
from qldbstream_tools.cli import simulate as simulate_command
from qldbstream_tools.simulate import (
    AUTO,
    BlockTarget,
    DeliveryOptions,
    Failure,
    RevisionIndex,
    RevisionTarget,
    Simulation,
    SimulationConfig,
    TableIndex,
    Tamper,
    Workload,
    WorkloadMix,
    parse_tamper,
    shard_for,
    simulate,
)
from qldbstream_tools.simulate.delivery import sequence_number
from qldbstream_tools.simulate.values import BASE62

from qldbstream.core.deaggregate import KPL_MAGIC, parse_aggregate
from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.core.ion.hash import ion_hash
from qldbstream.core.qldb_hash import dot, merkle_root

ID = re.compile(rf"^[{BASE62}]{{22}}$")


def sim_of(
    seed: int = 1, transactions: int = 120, tampers: tuple[str, ...] = (), **delivery: Any
) -> Simulation:
    return simulate(
        SimulationConfig(
            seed=seed,
            workload=Workload(transactions=transactions, deletes=5, redactions=3),
            delivery=DeliveryOptions(**delivery),
            tampers=tuple(parse_tamper(t) for t in tampers),
        )
    )


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return sim_of(seed=1, transactions=200)


def jsonl(s: Simulation, batch_size: int = 50) -> str:
    buf = io.StringIO()
    s.write_jsonl(buf, batch_size=batch_size)
    return buf.getvalue()


def decoded(s: Simulation) -> list[Any]:
    return [simpleion.loads(r.data) for r in s.records]


def user_records(s: Simulation) -> list[tuple[str, bytes]]:
    """(inner partition key, user record bytes) of every delivery, with our strict parser."""
    out = []
    for d in s.deliveries:
        if d.data[:4] == KPL_MAGIC:
            out += [(pk, data) for pk, _, data in parse_aggregate(d.data)]
        else:
            out.append((d.partition_key, d.data))
    return out


# -- determinism -------------------------------------------------------------------------------------


def test_same_seed_and_options_give_identical_bytes() -> None:
    a = sim_of(
        seed=4, shards=3, duplicate_rate=0.1, reorder_window=3, tampers=("Transactions#2:data.amount",)
    )
    b = sim_of(
        seed=4, shards=3, duplicate_rate=0.1, reorder_window=3, tampers=("Transactions#2:data.amount",)
    )
    assert jsonl(a) == jsonl(b)
    assert a.expected == b.expected
    assert [d.data for d in a.deliveries] == [d.data for d in b.deliveries]


def test_different_seed_gives_different_output() -> None:
    a, b = sim_of(seed=4), sim_of(seed=5)
    assert jsonl(a) != jsonl(b)
    assert {r.hash for r in a.ledger.revisions}.isdisjoint({r.hash for r in b.ledger.revisions})


def test_delivery_knobs_do_not_change_the_journal() -> None:
    plain = sim_of(seed=4)
    noisy = sim_of(seed=4, aggregate=False, shards=5, duplicate_rate=0.5, reorder_window=9)
    assert [r.data for r in plain.records] == [r.data for r in noisy.records]


def test_identical_across_processes_whatever_the_hash_seed() -> None:
    """Nothing depends on set/dict hashing order or the interpreter run (PYTHONHASHSEED)."""
    code = (
        "import io, hashlib\n"
        "from qldbstream_tools.simulate import *\n"
        "s = simulate(SimulationConfig(seed=6, workload=Workload(transactions=40, redactions=2, deletes=2),"
        " delivery=DeliveryOptions(shards=3, duplicate_rate=0.2, reorder_window=2),"
        " tampers=(parse_tamper('block=9:blockHash'),)))\n"
        "b = io.StringIO(); s.write_jsonl(b)\n"
        "print(hashlib.sha256(b.getvalue().encode()).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_no_wall_clock_in_the_output() -> None:
    s = sim_of(seed=2, transactions=10)
    first = s.journal.blocks[0].statements[0].start_ms
    assert first == int(datetime(2024, 3, 1, 9, 0, tzinfo=UTC).timestamp() * 1000)
    start = datetime(2021, 6, 2, 7, 3, 5, 226000, tzinfo=UTC)
    later = simulate(SimulationConfig(workload=Workload(transactions=10, start_time=start)))
    assert later.journal.blocks[0].statements[0].start_ms == int(start.timestamp() * 1000)


# -- structure -----------------------------------------------------------------------------------------


def test_every_record_is_one_ion_binary_struct_with_its_own_symbol_table(sim: Simulation) -> None:
    for r in sim.records:
        assert r.data.startswith(b"\xe0\x01\x00\xea\xee")  # version marker, then a local symbol table
        value = simpleion.loads(r.data)
        assert list(value) == ["qldbStreamArn", "recordType", "payload"]
        assert value["qldbStreamArn"] == sim.stream_arn
        assert value["recordType"].ion_type == IonType.STRING


def test_control_created_first_and_completed_last(sim: Simulation) -> None:
    values = decoded(sim)
    assert values[0]["payload"] == {"controlRecordType": "CREATED"}
    assert values[-1]["payload"] == {"controlRecordType": "COMPLETED"}
    assert [v["recordType"] for v in values].count("CONTROL") == 2
    bounded = sim_of(transactions=5, completed=False)
    assert bounded.records[-1].record_type != "CONTROL"


def test_blocks_then_their_revisions_in_summary_order(sim: Simulation) -> None:
    values = decoded(sim)
    seq = 0
    for i, v in enumerate(values[1:-1], start=1):
        p = v["payload"]
        if v["recordType"] == "BLOCK_SUMMARY":
            assert p["blockAddress"]["sequenceNo"] == seq + 1
            seq = p["blockAddress"]["sequenceNo"]
            users = [s for s in p["revisionSummaries"] if "documentId" in s]
            following = [values[i + 1 + k]["payload"]["revision"] for k in range(len(users))]
            assert [bytes(s["hash"]) for s in users] == [bytes(r["hash"]) for r in following]
            assert [s["documentId"] for s in users] == [r["metadata"]["id"] for r in following]
        else:
            assert p["revision"]["blockAddress"]["sequenceNo"] == seq


def test_block_summary_fields_like_the_real_ones(sim: Simulation) -> None:
    for v in decoded(sim):
        if v["recordType"] != "BLOCK_SUMMARY":
            continue
        p = v["payload"]
        fields = list(p)
        assert fields[:8] == [
            "blockAddress",
            "transactionId",
            "blockTimestamp",
            "blockHash",
            "entriesHash",
            "previousBlockHash",
            "entriesHashList",
            "transactionInfo",
        ]
        assert fields[-1] == "revisionSummaries"
        assert ID.match(p["blockAddress"]["strandId"]) and ID.match(p["transactionId"])
        assert len(p["entriesHashList"]) == (5 if "redactionInfo" in p else 4)
        assert all(len(h) == 32 for h in (p["blockHash"], p["entriesHash"], p["previousBlockHash"]))
        documents = p["transactionInfo"]["documents"]
        assert documents.ion_type == IonType.STRUCT
        for doc_id, info in documents.items():  # documentIds are field names (symbols)
            assert ID.match(doc_id)
            assert list(info) == ["tableName", "tableId", "statements"]
            assert all(0 <= k < len(p["transactionInfo"]["statements"]) for k in info["statements"])
        for s in p["revisionSummaries"]:
            if "documentId" in s:
                assert s["documentId"].ion_type == IonType.STRING
                assert s["documentId"] in documents


def test_timestamps_keep_millisecond_precision_and_z(sim: Simulation) -> None:
    stamps = []
    for v in decoded(sim):
        p = v["payload"]
        if v["recordType"] == "BLOCK_SUMMARY":
            stamps.append(p["blockTimestamp"])
            stamps += [s["startTime"] for s in p["transactionInfo"]["statements"]]
        elif v["recordType"] == "REVISION_DETAILS":
            stamps.append(p["revision"]["metadata"]["txTime"])
    assert len(stamps) > 500
    for t in stamps:
        assert t.precision == TimestampPrecision.SECOND and t.fractional_precision == 3
        assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0
    text = simpleion.dumps(simpleion.loads(sim.records[5].data), binary=False)
    assert re.search(r"txTime:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)


def test_block_timestamp_a_few_ms_after_tx_time_and_ids_agree(sim: Simulation) -> None:
    for block in sim.journal.blocks:
        for rev in block.revisions:
            assert 3 <= block.timestamp_ms - rev.tx_time_ms <= 20
            assert rev.tx_id == block.transaction_id
        assert all(s.start_ms < block.timestamp_ms for s in block.statements)


def test_versions_increment_per_document_and_one_revision_per_transaction(sim: Simulation) -> None:
    versions: dict[str, int] = {}
    for block in sim.journal.blocks:
        ids = [r.document_id for r in block.revisions]
        assert len(ids) == len(set(ids))
        for r in block.revisions:
            assert r.version == versions.get(r.document_id, -1) + 1
            versions[r.document_id] = r.version
    # INSERT then UPDATE of the new account in one transaction: one revision, version 0.
    opened = [b for b in sim.journal.blocks if b.kind == "open_account"]
    for b in opened:
        account = next(r for r in b.revisions if r.table == "Accounts")
        assert account.version == 0
        info = b.transaction_info["documents"][account.document_id]["statements"]
        assert len(info) == 3 and info[1] == info[2] > info[0]  # [insert, update, update]: two SET targets


def test_deletes_have_no_data_and_redactions_show_data_hash(sim: Simulation) -> None:
    deleted = redacted = 0
    for r in sim.records_of("REVISION_DETAILS"):
        revision = r.value["payload"]["revision"]
        truth = sim.ledger.revision(r.document_id, r.version)
        if truth.op == "delete":
            deleted += 1
            assert "data" not in revision and "dataHash" not in revision
            assert revision["hash"] == ion_hash(revision["metadata"])  # inference V2b
        elif truth.redacted:
            redacted += 1
            assert "data" not in revision
            assert revision["dataHash"] == ion_hash(truth.data) == truth.data_hash
            assert revision["hash"] == dot(ion_hash(revision["metadata"]), ion_hash(truth.data))
        else:
            assert "dataHash" not in revision
    assert deleted == 5
    assert redacted == 3 == len(sim.ledger.redactions)


def test_a_live_stream_shows_redacted_revisions_with_their_data() -> None:
    live = simulate(
        SimulationConfig(seed=1, workload=Workload(transactions=60, redactions=2), replayed=False)
    )
    assert all("dataHash" not in r.value["payload"]["revision"] for r in live.records_of("REVISION_DETAILS"))
    assert sum(r.redacted for r in live.ledger.revisions) == 2


def test_redaction_blocks(sim: Simulation) -> None:
    blocks = [b for b in sim.journal.blocks if b.redaction_info is not None]
    assert len(blocks) == 3
    for b in blocks:
        (target,) = b.redaction_info["revisions"]
        assert list(target) == ["blockAddress", "tableId", "documentId", "version"]
        rev = sim.journal.revisions[(target["documentId"], target["version"])]
        assert rev.sequence_no < b.sequence_no and target["blockAddress"]["sequenceNo"] == rev.sequence_no
        assert b.statements[0].text == "EXEC redact_revision ?, ?, ?"
        assert b.statements[0].parameters[1:] == (rev.table_id, rev.document_id)
        assert b.entries_hash_list[4] == ion_hash(b.redaction_info)
        # only superseded revisions can be redacted
        assert any(r.document_id == rev.document_id and r.version > rev.version for r in sim.ledger.revisions)


def test_values_keep_their_ion_types(sim: Simulation) -> None:
    seen: Counter[str] = Counter()
    for r in sim.records_of("REVISION_DETAILS"):
        data = simpleion.loads(r.data)["payload"]["revision"].get("data")
        if data is None:
            continue
        if "amount" in data:
            assert data["amount"].ion_type == IonType.DECIMAL and data["amount"].as_tuple().exponent == -2
            assert data["channel"].ion_type == IonType.SYMBOL
            if isinstance(data["merchant"], IonPyNull):
                assert data["merchant"].ion_type == IonType.STRING  # null.string
                seen["null.string"] += 1
        if "balance" in data:
            assert data["balance"].ion_type == IonType.DECIMAL
        if "dateOfBirth" in data:
            assert data["dateOfBirth"].precision == TimestampPrecision.DAY
            assert data["riskScore"].ion_type == IonType.FLOAT
            assert all(s.ion_type == IonType.SYMBOL for s in data["segments"])
            seen["customer"] += 1
    assert seen["null.string"] and seen["customer"]


def test_statements_with_placeholders_and_some_without_parameters(sim: Simulation) -> None:
    texts = Counter(s.text for b in sim.journal.blocks for s in b.statements)
    assert texts["INSERT INTO Transactions ?"] > 50
    assert texts["UPDATE Accounts AS a SET a.balance = ?, a.lastActivityAt = ? WHERE a.accountId = ?"] > 50
    no_params = [s for b in sim.journal.blocks for s in b.statements if not s.parameters]
    assert any(s.text.startswith("SELECT COUNT(*) FROM Transactions") for s in no_params)
    for b in sim.journal.blocks:
        for s in b.statements:
            assert s.text.count("?") == len(s.parameters) or s.text == "INSERT INTO Transactions ?"


def test_some_blocks_have_hash_only_system_entries(sim: Simulation) -> None:
    system = [b for b in sim.journal.blocks if any(d is None for _, d in b.summaries)]
    assert any(b.kind == "ddl" for b in system) and any(b.kind not in ("ddl", "redaction") for b in system)
    ddl = sim.journal.blocks[0]
    assert ddl.kind == "ddl" and not ddl.revisions and ddl.statements[0].text == "CREATE TABLE Customers"


# -- hashes (recomputed with the project's own ion_hash and qldb_hash) ------------------------------------


def test_every_hash_recomputes(sim: Simulation) -> None:
    blocks: dict[int, Any] = {}
    for pk, data in user_records(sim):
        value = simpleion.loads(data)
        p = value["payload"]
        if value["recordType"] == "REVISION_DETAILS":
            rev = p["revision"]
            data_hash = ion_hash(rev["data"]) if "data" in rev else rev.get("dataHash")
            h = ion_hash(rev["metadata"]) if data_hash is None else dot(ion_hash(rev["metadata"]), data_hash)
            assert h == rev["hash"]  # V2
            assert pk == bytes(rev["hash"]).hex()
        elif value["recordType"] == "BLOCK_SUMMARY":
            assert pk == bytes(p["blockHash"]).hex()
            blocks[p["blockAddress"]["sequenceNo"]] = p
    params = sim.ledger.statement_parameters
    for seq, p in blocks.items():
        entries = list(p["entriesHashList"])
        assert entries[1] == merkle_root([s["hash"] for s in p["revisionSummaries"]])  # V4
        assert entries[3] == ion_hash(p["transactionInfo"])  # V5
        for k, st in enumerate(p["transactionInfo"]["statements"]):  # V6
            acc = ion_hash(st["statement"])
            for value in params[seq][k]:
                acc = dot(acc, ion_hash(value))
            assert acc == st["statementDigest"]
        assert merkle_root(entries) == p["entriesHash"]  # V7
        assert dot(p["entriesHash"], p["previousBlockHash"]) == p["blockHash"]  # V8
        if seq - 1 in blocks:
            assert p["previousBlockHash"] == blocks[seq - 1]["blockHash"]  # V9
    assert len(blocks) == len(sim.journal.blocks)


# -- delivery ------------------------------------------------------------------------------------------


def test_one_aggregate_per_block_with_hash_partition_keys(sim: Simulation) -> None:
    blocks = 0
    for d in sim.deliveries:
        if not d.aggregated:
            assert sim.records[d.records[0]].record_type == "CONTROL"
            continue
        blocks += 1
        entries = parse_aggregate(d.data)
        records = [sim.records[i] for i in d.records]
        assert records[0].record_type == "BLOCK_SUMMARY"
        assert all(r.record_type == "REVISION_DETAILS" for r in records[1:])
        assert [pk for pk, _, _ in entries] == [r.partition_key for r in records]
        assert all(ehk is None for _, ehk, _ in entries)
        assert [data for _, _, data in entries] == [r.data for r in records]
        assert re.fullmatch("[0-9a-f]{64}", d.partition_key) and d.partition_key not in {
            pk for pk, _, _ in entries
        }
    assert blocks == len(sim.journal.blocks)


def test_without_aggregation_one_kinesis_record_per_journal_record() -> None:
    s = sim_of(aggregate=False)
    assert len(s.deliveries) == len(s.records)
    for d in s.deliveries:
        (i,) = d.records
        assert d.data == s.records[i].data and d.data[:4] != KPL_MAGIC
        assert d.partition_key == s.records[i].partition_key


def test_duplicates_redeliver_identical_bytes_later() -> None:
    assert not any(d.duplicate for d in sim_of().deliveries)
    s = sim_of(duplicate_rate=0.25, aggregate=False)
    dups = [i for i, d in enumerate(s.deliveries) if d.duplicate]
    assert 0.15 * len(s.records) < len(dups) < 0.35 * len(s.records)
    position = {d.unit: i for i, d in enumerate(s.deliveries) if not d.duplicate}
    for i in dups:
        d = s.deliveries[i]
        assert s.deliveries[position[d.unit]].data == d.data and position[d.unit] < i
    every = sim_of(duplicate_rate=1.0, transactions=20)
    assert Counter(Counter(d.unit for d in every.deliveries).values()) == {2: len(every.deliveries) // 2}


@pytest.mark.parametrize("window", [0, 1, 4])
def test_reordering_is_bounded_by_the_window(window: int) -> None:
    s = sim_of(aggregate=False, reorder_window=window, transactions=80)
    order = [d.unit for d in s.deliveries]
    inversions = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :] if a > b]
    assert all(a - b <= window for a, b in inversions)
    assert bool(inversions) == bool(window)
    if window >= 4:  # without aggregation a revision can arrive before its block summary
        types = [s.records[d.records[0]].record_type for d in s.deliveries]
        firsts = {}
        for d, t in zip(s.deliveries, types, strict=True):
            firsts.setdefault(s.records[d.records[0]].sequence_no, t)
        assert "REVISION_DETAILS" in firsts.values()


def test_shards_follow_the_md5_rule_and_sequence_numbers_increase() -> None:
    assert shard_for("a", 1) == 0
    key = "be86263c6e356fdfb6dcfed4d841139642347be377a0f2c211fe1a137956abc7"
    h = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    assert shard_for(key, 4) == h // 2**126
    s = sim_of(shards=4, duplicate_rate=0.1)
    last: dict[str, int] = {}
    for d in s.deliveries:
        assert d.shard_id == f"shardId-{shard_for(d.partition_key, 4):012d}"
        assert len(d.sequence_number) == 56 and d.sequence_number.startswith("49")
        n = int(d.sequence_number)
        assert n > last.get(d.shard_id, 0)
        last[d.shard_id] = n
    assert len(last) == 4
    real = "49608533396912580565843582016389495421776335424639205378"
    assert sequence_number(1593769861, 0, 13985120, 1593808603) == real  # the layout of a real one


def test_lambda_events_hold_one_shard_each_in_order() -> None:
    s = sim_of(shards=3, duplicate_rate=0.1)
    events = [json.loads(line) for line in jsonl(s, batch_size=17).splitlines()]
    seen = []
    for event in events:
        records = event["Records"]
        assert 1 <= len(records) <= 17
        shards = {r["eventID"].split(":")[0] for r in records}
        assert len(shards) == 1
        seqs = [int(r["kinesis"]["sequenceNumber"]) for r in records]
        assert seqs == sorted(seqs)
        for r in records:
            assert r["eventSource"] == "aws:kinesis" and r["eventName"] == "aws:kinesis:record"
            assert r["kinesis"]["kinesisSchemaVersion"] == "1.0"
            assert r["eventID"].endswith(":" + r["kinesis"]["sequenceNumber"])
            assert r["eventSourceARN"] == s.config.source.stream_arn
            seen.append(base64.b64decode(r["kinesis"]["data"]))
    assert sorted(seen) == sorted(d.data for d in s.deliveries)


# -- tampering -----------------------------------------------------------------------------------------


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two decoded Ion values differ (compared as Ion, so typed nulls compare equal)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in dict.fromkeys([*a, *b]):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if simpleion.dumps(a) == simpleion.dumps(b) else [path]


@pytest.mark.parametrize(
    ("spec", "changed"),
    [
        ("Transactions#3:data.amount", "payload.revision.data.amount"),
        ("revision#7:metadata.txTime", "payload.revision.metadata.txTime"),
        ("block=9:entriesHashList[1]", "payload.entriesHashList[1]"),
        (
            "block=9:transactionInfo.statements[0].statement",
            "payload.transactionInfo.statements[0].statement",
        ),
        ("block=12:blockHash", "payload.blockHash"),
        ("block=12:previousBlockHash", "payload.previousBlockHash"),
    ],
)
def test_tamper_changes_exactly_the_named_field(spec: str, changed: str) -> None:
    clean, tampered = sim_of(seed=3), sim_of(seed=3, tampers=(spec,))
    differing = [
        i for i, (a, b) in enumerate(zip(clean.records, tampered.records, strict=True)) if a.data != b.data
    ]
    assert len(differing) == 1
    (i,) = differing
    assert _diff(simpleion.loads(clean.records[i].data), simpleion.loads(tampered.records[i].data)) == [
        changed
    ]
    assert clean.records[i].partition_key == tampered.records[i].partition_key  # QLDB keyed it before


def test_automatic_changes_keep_the_type() -> None:
    s = sim_of(
        seed=3, tampers=("Transactions#3:data.amount", "revision#7:metadata.txTime", "Customers#0:data.ssn")
    )
    (amount, txtime, ssn) = s.expected.tampers
    assert Decimal(amount.after) - Decimal(amount.before) == 1 and amount.after.count(".") == 1
    assert txtime.after.endswith("Z") and len(txtime.after) == len(txtime.before)
    assert len(ssn.after) == len(ssn.before) and ssn.after != ssn.before


def test_explicit_value_and_rehash_levels() -> None:
    clean = sim_of(seed=3)
    s = sim_of(seed=3, tampers=("Transactions#3+rehash:data.amount=0.01",))
    rec = next(
        r
        for r in s.records_of("REVISION_DETAILS")
        if r.value["payload"]["revision"].get("data", {}).get("amount") == Decimal("0.01")
    )
    rev = rec.value["payload"]["revision"]
    assert rev["hash"] == dot(ion_hash(rev["metadata"]), ion_hash(rev["data"]))  # consistently re-hashed
    assert rec.partition_key == rev["hash"].hex()
    block = next(r for r in s.records_of("BLOCK_SUMMARY") if r.sequence_no == rec.sequence_no)
    assert rev["hash"] in [x["hash"] for x in block.value["payload"]["revisionSummaries"]]
    assert [f.check for f in s.expected.failures] == ["V4"]
    s2 = sim_of(seed=3, tampers=("Transactions#3+rehash-block:data.amount=0.01",))
    assert [(f.check, f.sequence_no) for f in s2.expected.failures] == [("V9", rec.sequence_no + 1)]
    forged = next(r for r in s2.records_of("BLOCK_SUMMARY") if r.sequence_no == rec.sequence_no)
    original = next(r for r in clean.records_of("BLOCK_SUMMARY") if r.sequence_no == rec.sequence_no)
    assert forged.value["payload"]["blockHash"] != original.value["payload"]["blockHash"]
    assert forged.partition_key == forged.value["payload"]["blockHash"].hex()


def test_parse_tamper() -> None:
    assert parse_tamper("block=12:blockHash") == Tamper(BlockTarget(12), "blockHash")
    assert parse_tamper("revision#3:data.amount") == Tamper(RevisionIndex(3), "data.amount", AUTO)
    assert parse_tamper("Accounts#2+rehash:data.balance").target == TableIndex("Accounts", 2)
    t = parse_tamper(
        "revision=5vHoYG5m0OZCsqdYCs8XLH@13+rehash-block:metadata.txTime=2021-06-02T07:03:05.227Z"
    )
    assert t.target == RevisionTarget("5vHoYG5m0OZCsqdYCs8XLH", 13) and t.rehash == "block"
    assert t.value.precision == TimestampPrecision.SECOND
    for spec in [
        "block=12:transactionInfo.statements[0].statement",
        'revision#3:data.merchant="x"',
        "kpl=4:md5",
        "Transactions#1+rehash:data.amount=1.00",
    ]:
        assert parse_tamper(parse_tamper(spec).spec).spec == spec
    for bad in ["block12:blockHash", "block=1", "revision#x:hash", "block=1:a..b", "block=1:x={{bad"]:
        with pytest.raises(ConfigurationError, match="tamper"):
            parse_tamper(bad)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("block=999:blockHash", "no block 999"),
        ("revision#99999:hash", "only"),
        ("block=5:blockAddress.sequenceNo", "identity"),
        ("block=5:nonsense", "a block's fields are"),
        ("revision#1:nonsense", "a revision's fields are"),
        ("block=5+rehash:blockHash", "rehash-block only"),
        ("revision#1+rehash:hash", "rehash applies"),
        ("Accounts#0:data.amount", "its data fields are"),
        ("kpl=5:data", "md5"),
        ("block=5:transactionInfo.statements", "scalar"),
        ('block=2:transactionInfo.statements[0].statement="CREATE TABLE Accounts"', "already has that value"),
    ],
)
def test_bad_tampers_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        sim_of(seed=3, tampers=(spec,))


def test_kpl_tamper_needs_aggregation() -> None:
    with pytest.raises(ConfigurationError, match="aggregated"):
        sim_of(seed=3, tampers=("kpl=5:md5",), aggregate=False)


# -- expected verdicts, hand-checked -----------------------------------------------------------------------


def failures(s: Simulation) -> list[tuple[Any, ...]]:
    return [
        (f.check, f.sequence_no, f.document_id, f.version, f.statement, f.requires_parameters)
        for f in s.expected.failures
    ]


def test_verdicts_for_revision_tampers() -> None:
    s = sim_of(seed=3, tampers=("Transactions#3:data.amount",))
    (t,) = s.expected.tampers
    rec = [
        r
        for r in s.records_of("REVISION_DETAILS")
        if r.value["payload"]["tableInfo"]["tableName"] == "Transactions"
    ]
    target = [r for r in rec if "data" in r.value["payload"]["revision"]][3]
    assert failures(s) == [("V2", target.sequence_no, target.document_id, target.version, None, False)]
    assert t.record == target.describe()
    # a revision's own hash: V2 and V3 fail; V4 reads revisionSummaries and still passes
    s = sim_of(seed=3, tampers=("revision#7:hash",))
    r = s.records_of("REVISION_DETAILS")[7]
    assert failures(s) == [
        ("V2", r.sequence_no, r.document_id, r.version, None, False),
        ("V3", r.sequence_no, r.document_id, r.version, None, False),
    ]
    s = sim_of(seed=3, tampers=("revision#7:tableInfo.tableName",))
    assert failures(s) == [] and "no check fails" in s.expected.tampers[0].notes[0]


def test_verdicts_for_block_tampers() -> None:
    s = sim_of(seed=3, tampers=("block=12:blockHash",))
    assert failures(s) == [("V8", 12, None, None, None, False), ("V9", 13, None, None, None, False)]
    last = s.journal.blocks[-1].sequence_no
    s = sim_of(seed=3, tampers=(f"block={last}:blockHash", "block=1:previousBlockHash"))
    assert [(f.check, f.sequence_no) for f in s.expected.failures] == [("V8", 1), ("V8", last)]
    s = sim_of(seed=3, tampers=("block=12:previousBlockHash",))
    assert [(f.check, f.sequence_no) for f in s.expected.failures] == [("V8", 12), ("V9", 12)]
    assert s.expected.failures[1].to_json()["previousSequenceNo"] == 11
    s = sim_of(
        seed=3,
        tampers=("block=12:entriesHashList[0]", "block=13:entriesHashList[1]", "block=14:entriesHashList[3]"),
    )
    assert [(f.check, f.sequence_no) for f in s.expected.failures] == [
        ("V4", 13),
        ("V5", 14),
        ("V7", 12),
        ("V7", 13),
        ("V7", 14),
    ]


def test_verdicts_for_statement_tampers() -> None:
    probe = sim_of(seed=3)
    with_params = next(b for b in probe.journal.blocks if b.kind == "card_payment")
    without = next(b for b in probe.journal.blocks if b.kind == "account_review")
    s = sim_of(
        seed=3,
        tampers=(
            f"block={with_params.sequence_no}:transactionInfo.statements[0].statement",
            f"block={without.sequence_no}:transactionInfo.statements[1].statementDigest",
        ),
    )
    assert sorted(failures(s)) == sorted(
        [
            ("V5", with_params.sequence_no, None, None, None, False),
            ("V6", with_params.sequence_no, None, None, 0, True),  # checkable only with the parameters
            ("V5", without.sequence_no, None, None, None, False),
            ("V6", without.sequence_no, None, None, 1, False),  # no parameters: checkable from the stream
        ]
    )


def test_expected_verdicts_as_json() -> None:
    s = sim_of(seed=3, tampers=("block=12:blockHash",))
    doc = json.loads(json.dumps(s.expected.to_json()))
    assert doc["failures"] == [
        {"check": "V8", "subject": "block", "sequenceNo": 12},
        {"check": "V9", "subject": "link", "sequenceNo": 13, "previousSequenceNo": 12},
    ]
    assert set(doc["checks"]) == {f"V{i}" for i in range(1, 10)}
    assert doc["tampers"][0]["spec"] == "block=12:blockHash"
    assert s.expected.failing("V9") == [Failure("V9", 13)]
    assert sim_of(seed=3).expected.clean


# -- ground truth --------------------------------------------------------------------------------------


def test_ground_truth_matches_the_stream(sim: Simulation) -> None:
    ledger = sim.ledger
    assert len(ledger.revisions) == len(sim.records_of("REVISION_DETAILS"))
    for r in sim.records_of("REVISION_DETAILS"):
        truth = ledger.revision(r.document_id, r.version)
        revision = simpleion.loads(r.data)["payload"]["revision"]
        assert truth.hash == bytes(revision["hash"])
        if "data" in revision:
            assert simpleion.dumps(revision["data"]) == simpleion.dumps(truth.data)
    for doc_id, state in ledger.documents.items():
        last = max((r for r in ledger.revisions if r.document_id == doc_id), key=lambda r: r.version)
        assert state.version == last.version and state.deleted == (last.op == "delete")
    assert set(ledger.table_ids) == {"Customers", "Accounts", "Transactions"}
    assert ledger.to_json()["revisions"][0]["data"].startswith("{")


def test_account_balances_follow_their_transactions(sim: Simulation) -> None:
    ledger = sim.ledger
    for doc_id, state in ledger.documents.items():
        if state.table != "Accounts":
            continue
        flows = Decimal("0.00")
        for t in ledger.account_transactions[state.data["accountId"]]:
            if not t.reversed:
                flows += t.amount if t.type in ("DEPOSIT", "TRANSFER_IN") else -t.amount
        assert state.data["balance"] == flows, doc_id


def test_planted_fraud_patterns() -> None:
    s = simulate(
        SimulationConfig(
            seed=9, workload=Workload(transactions=400, mix=WorkloadMix(small_burst=10, high_value=5))
        )
    )
    ledger = s.ledger
    assert ledger.bursts
    small = {t.document_id for txs in ledger.account_transactions.values() for t in txs if t.small}
    in_bursts = {d for b in ledger.bursts for d in b.document_ids}
    assert small == in_bursts  # every amount < 10 belongs to a planted burst
    for b in ledger.bursts:
        txs = {t.document_id: t for t in ledger.account_transactions[b.account_id]}
        assert all(txs[d].amount < 10 for d in b.document_ids)
        assert b.last_ms - b.first_ms <= 240_000
    assert max(len(b.document_ids) for b in ledger.bursts) >= 5
    assert ledger.high_value(Decimal("10000.00"))


def test_exact_counts_and_explicit_redactions() -> None:
    s = simulate(SimulationConfig(seed=2, workload=Workload(transactions=50, deletes=7, redactions=4)))
    assert s.summary()["deletes"] == 7 and s.summary()["redactions"] == 4
    target = next(
        r for r in s.ledger.revisions if r.table == "Accounts" and r.version == 0 and not r.redacted
    )
    again = simulate(
        SimulationConfig(
            seed=2,
            workload=Workload(transactions=50, deletes=7, redactions=4, redact=((target.document_id, 0),)),
        )
    )
    assert again.ledger.revision(target.document_id, 0).redacted
    assert again.ledger.redactions[-1].document_id == target.document_id
    latest = max(v.version for v in s.ledger.revisions if v.document_id == target.document_id)
    with pytest.raises(ConfigurationError, match="superseded"):
        simulate(
            SimulationConfig(
                seed=2,
                workload=Workload(
                    transactions=50, deletes=7, redactions=4, redact=((target.document_id, latest),)
                ),
            )
        )


def test_invalid_configuration() -> None:
    with pytest.raises(ConfigurationError):
        simulate(SimulationConfig(workload=Workload(transactions=0)))
    with pytest.raises(ConfigurationError):
        simulate(SimulationConfig(delivery=DeliveryOptions(duplicate_rate=2)))
    with pytest.raises(ConfigurationError):
        simulate(
            SimulationConfig(
                workload=Workload(mix=WorkloadMix(**dict.fromkeys(WorkloadMix.__dataclass_fields__, 0)))
            )
        )


@pytest.mark.slow
def test_twenty_thousand_revisions_in_well_under_a_minute() -> None:
    started = time.perf_counter()
    s = simulate(SimulationConfig(seed=8, workload=Workload(transactions=10_000)))
    elapsed = time.perf_counter() - started
    assert len(s.ledger.revisions) >= 20_000
    assert elapsed < 45, elapsed


# -- the command ----------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="qldbstream")
    simulate_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", *argv])
    return int(args.handler(args))


def test_cli_writes_events_expected_verdicts_and_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, expected, ledger = tmp_path / "ev.jsonl", tmp_path / "exp.json", tmp_path / "ledger.json"
    code = run_cli(
        "--seed", "3", "--transactions", "40", "--shards", "2", "--duplicates", "0.1", "--reorder", "2",
        "--tamper", "Transactions#2:data.amount", "--delete", "2", "--redact", "1",
        "--expected", str(expected), "--ledger", str(ledger), "-o", str(out), "--batch-size", "10",
    )  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(1 <= len(e["Records"]) <= 10 for e in events)
    doc = json.loads(expected.read_text())
    assert [f["check"] for f in doc["failures"]] == ["V2"]
    assert json.loads(ledger.read_text())["redactions"][0]["op"] == "redact"
    assert "expected check failures" in capsys.readouterr().err
    same = tmp_path / "again.jsonl"
    run_cli("--seed", "3", "--transactions", "40", "--shards", "2", "--duplicates", "0.1", "--reorder", "2",
            "--tamper", "Transactions#2:data.amount", "--delete", "2", "--redact", "1", "-o", str(same),
            "--batch-size", "10")  # fmt: skip
    assert same.read_bytes() == out.read_bytes()


def test_cli_to_stdout_without_aggregation(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_cli(
            "--transactions", "5", "--no-aggregate", "--no-completed", "--mix", "card_payment=1", "-o", "-"
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    records = [r for line in lines for r in json.loads(line)["Records"]]
    same = simulate(
        SimulationConfig(
            workload=Workload(
                transactions=5,
                mix=replace(WorkloadMix(), card_payment=1),  # --mix overrides the weights it names
            ),
            delivery=DeliveryOptions(aggregate=False, completed=False),
        )
    )
    assert [base64.b64decode(r["kinesis"]["data"]) for r in records] == [r.data for r in same.records]
    assert same.records[-1].record_type != "CONTROL"  # --no-completed


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        ((), ConfigurationError, "either --output"),
        (("-o", "x", "--stream", "s"), ConfigurationError, "either --output"),
        (("-o", "x", "--create-stream"), ConfigurationError, "go with --stream"),
        (("-o", "x", "--mix", "bogus=1"), ConfigurationError, "--mix"),
        (("-o", "x", "--redact-revision", "nope"), ConfigurationError, "DOCUMENT_ID@VERSION"),
        (("-o", "x", "--start-time", "yesterday"), ConfigurationError, "ISO 8601"),
        (("-o", "/nonexistent-dir/x.jsonl", "--transactions", "3"), InputError, "cannot write"),
    ],
)
def test_cli_errors_are_one_clear_line(argv: tuple[str, ...], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)) as info:
        run_cli(*argv)
    assert "\n" not in str(info.value)


def test_cli_puts_into_kinesis(monkeypatch: pytest.MonkeyPatch) -> None:
    """--stream goes through kinesis_put (a fake client stands in for Kinesis)."""

    class FakeKinesis:
        def __init__(self) -> None:
            self.put: list[dict[str, Any]] = []
            self.created: list[tuple[str, int]] = []
            self.meta = argparse.Namespace(endpoint_url="http://127.0.0.1:1")

        def create_stream(self, StreamName: str, ShardCount: int, **_: Any) -> None:
            self.created.append((StreamName, ShardCount))

        def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
            return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE", "StreamARN": "arn:x"}}

        def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
            self.put += Records
            return {
                "FailedRecordCount": 0,
                "Records": [
                    {"ShardId": "shardId-000000000000", "SequenceNumber": str(i)} for i in range(len(Records))
                ],
            }

    fake = FakeKinesis()
    import boto3

    monkeypatch.setattr(boto3, "client", lambda *a, **k: fake)
    code = run_cli(
        "--transactions",
        "8",
        "--stream",
        "sim",
        "--endpoint-url",
        "http://127.0.0.1:1",
        "--create-stream",
        "--shards",
        "2",
    )
    assert code == 0
    assert fake.created == [("sim", 2)]
    expected = simulate(
        SimulationConfig(workload=Workload(transactions=8), delivery=DeliveryOptions(shards=2))
    )
    assert [r["Data"] for r in fake.put] == [d.data for d in expected.deliveries]
    assert [r["PartitionKey"] for r in fake.put] == [d.partition_key for d in expected.deliveries]


# -- faithful to the real QLDB samples ---------------------------------------------------------------

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "qldb-real"


def real_s1() -> list[Any]:
    """The two user records of the real aggregate S1 (qldb-simple-demo, block 545)."""
    event = json.loads((REAL / "simpledemo_streams-dynamodb_data.json").read_text())
    data = base64.b64decode(event["Records"][0]["kinesis"]["data"])
    return [simpleion.loads(payload) for _, _, payload in parse_aggregate(data)]


def test_the_hash_rules_reproduce_real_qldb_values() -> None:
    from qldbstream_tools.simulate.journal import revision_hash, statement_digest

    wallet = simpleion.loads((REAL / "wallet_revisions.ion").read_text(), single_value=False)
    for record in wallet:
        rev = record["payload"]["revision"]
        assert revision_hash(ion_hash(rev["metadata"]), ion_hash(rev["data"])) == rev["hash"]
    block, details = real_s1()
    p = block["payload"]
    data = details["payload"]["revision"]["data"]
    inserted = [{k: v for k, v in data.items() if k not in ("GUID", "LicenceId")}]  # before the UPDATE
    params = [
        ["testuser@gmail.com"],
        [inserted],
        ["LSkFrekxpQeDFzPFUNidAt", "LSKFREKXPQEDFZPFUNIDAT", "Test User"],
    ]
    for st, values in zip(p["transactionInfo"]["statements"], params, strict=True):
        digest = statement_digest(ion_hash(st["statement"]), [ion_hash(v) for v in values])
        assert digest == st["statementDigest"]
    assert merkle_root([s["hash"] for s in p["revisionSummaries"]]) == p["entriesHashList"][1]
    assert ion_hash(p["transactionInfo"]) == p["entriesHashList"][3]


def test_records_have_the_field_order_of_real_ones(sim: Simulation) -> None:
    block, details = real_s1()
    mine_block = next(
        r.value
        for r in sim.records_of("BLOCK_SUMMARY")
        if r.value["payload"]["revisionSummaries"][0].get("documentId")
    )
    mine_details = next(
        r.value for r in sim.records_of("REVISION_DETAILS") if "data" in r.value["payload"]["revision"]
    )
    assert list(mine_block) == list(block)
    assert [k for k in mine_block["payload"] if k != "redactionInfo"] == list(block["payload"])
    assert list(mine_block["payload"]["transactionInfo"]) == list(block["payload"]["transactionInfo"])
    st = mine_block["payload"]["transactionInfo"]["statements"][0]
    assert list(st) == list(block["payload"]["transactionInfo"]["statements"][0])
    assert list(mine_details["payload"]) == list(details["payload"])
    assert list(mine_details["payload"]["revision"]) == list(details["payload"]["revision"])
    assert list(mine_details["payload"]["revision"]["metadata"]) == list(
        details["payload"]["revision"]["metadata"]
    )
