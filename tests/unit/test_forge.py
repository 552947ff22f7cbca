"""The independent forge (tests/support/forge.py): its authentic output obeys QLDB's rules as the
oracles (amazon-ion, ionhash, aws-kinesis-agg) recompute them, each forgery rung breaks exactly one
check, and its Kinesis delivery behaves like Kinesis. Also records what qldbstream's Verifier says
of each rung (the facts the delivery gate builds on)."""

from __future__ import annotations

import base64
import itertools
import json
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import decode
from qldbstream.core.records import KinesisRecord
from qldbstream.core.verify import Failure, Verifier
from tests.support import forge
from tests.support.forge import (
    RUNGS,
    Delivery,
    Journal,
    Ledger,
    ShardRecord,
    StreamRecord,
    build_ledger,
    check_record,
    check_stream,
    deliver,
    hash_key,
    ion_hash,
    merkle_root,
    shard_ranges,
    statement_digest,
)

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "qldb-real"
KPL_MAGIC = b"\xf3\x89\x9a\xc2"


@cache
def ledger(seed: int = 0) -> Ledger:
    return build_ledger(seed)


@cache
def journal(seed: int = 0, rungs: tuple[str, ...] = ()) -> Journal:
    return forge.forge(ledger(seed), rungs, seed=seed)


def values(j: Journal, kind: str) -> list[Any]:
    return [simpleion.loads(r.data) for r in j.records if r.kind == kind]


def real_s3() -> list[Any]:
    """The real aggregate S3 (block 532 with two revisions), deaggregated by aws-kinesis-agg."""
    event = json.loads((REAL / "simpledemo_7f20a42_streams_data1.json").read_text())
    return [
        simpleion.loads(base64.b64decode(u["kinesis"]["data"]))
        for u in iter_deaggregate_records(event["Records"])
    ]


# --- (a) the authentic stream obeys every rule ----------------------------------------------------


def test_the_forge_hash_rules_reproduce_real_qldb_values() -> None:
    """The forge's own primitives (ionhash + reference_dot) give QLDB's values on a real block."""
    block, *revisions = real_s3()
    p = block["payload"]
    assert merkle_root([s["hash"] for s in p["revisionSummaries"]]) in p["entriesHashList"]
    assert ion_hash(p["transactionInfo"]) in p["entriesHashList"]
    assert merkle_root(p["entriesHashList"]) == p["entriesHash"]
    for r in revisions:
        assert check_record(simpleion.dumps(r, binary=True)) == []
    assert check_record(simpleion.dumps(block, binary=True)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_authentic_stream_passes_the_independent_oracle(seed: int) -> None:
    j = journal(seed)
    assert check_stream(j.records) == []
    # every statement digest, parameters included (they are not in the stream; the truth has them)
    for block in values(j, "BLOCK_SUMMARY"):
        p = block["payload"]
        seq = p["blockAddress"]["sequenceNo"]
        for k, st in enumerate(p["transactionInfo"]["statements"]):
            params = j.truth.statement_params[(seq, k)]
            assert statement_digest(st["statement"], params) == st["statementDigest"]


def test_the_authentic_stream_has_the_ledger_it_promises() -> None:
    j = journal(0)
    assert [r.control for r in j.records if r.kind == "CONTROL"] == ["CREATED", "COMPLETED"]
    assert j.records[0].control == "CREATED" and j.records[-1].control == "COMPLETED"
    for r in j.records:  # each user record is one complete Ion binary stream with its own symbols
        assert r.data[:4] == b"\xe0\x01\x00\xea"
        assert len(simpleion.loads(r.data, single_value=False)) == 1
    blocks = values(j, "BLOCK_SUMMARY")
    seqs = [b["payload"]["blockAddress"]["sequenceNo"] for b in blocks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len({b["payload"]["blockAddress"]["strandId"] for b in blocks}) == 1
    sizes = {len([s for s in b["payload"]["revisionSummaries"] if "documentId" in s]) for b in blocks}
    assert {0, 1, 2, 3} <= sizes
    revs = values(j, "REVISION_DETAILS")
    tables_per_block: dict[int, set[str]] = defaultdict(set)
    versions: dict[str, list[int]] = defaultdict(list)
    deleted_tables = set()
    for r in revs:
        rev = r["payload"]["revision"]
        tables_per_block[rev["blockAddress"]["sequenceNo"]].add(r["payload"]["tableInfo"]["tableName"])
        versions[rev["metadata"]["id"]].append(rev["metadata"]["version"])
        if "data" not in rev:
            deleted_tables.add(r["payload"]["tableInfo"]["tableName"])
    assert any(len(t) == 2 for t in tables_per_block.values())
    assert all(v == list(range(len(v))) for v in versions.values())
    assert max(len(v) for v in versions.values()) >= 4
    assert deleted_tables == {"Accounts", "Transactions"}
    types = set()
    for r in revs:
        for value in r["payload"]["revision"].get("data", {}).values():
            types.add(value.ion_type)
    assert {IonType.DECIMAL, IonType.TIMESTAMP, IonType.STRUCT, IonType.LIST, IonType.NULL} <= types
    # statements with and without parameters (V6 checkable on the latter)
    texts = [s["statement"] for b in blocks for s in b["payload"]["transactionInfo"]["statements"]]
    assert any("?" in t for t in texts) and any("?" not in t for t in texts)


def shape(value: Any, name: str = "") -> Any:
    """Field names, field order and Ion types (timestamps with their precision), minus user data."""
    if name == "data":
        return "data"
    t = value.ion_type
    if t is IonType.STRUCT:
        if name == "documents":
            return ("documents", {shape(v) for v in value.values()})
        return tuple((k, shape(v, k)) for k, v in value.items())
    if t is IonType.LIST:
        return ("list", frozenset(shape(v) for v in value))
    if t is IonType.TIMESTAMP:
        return (t, value.precision, value.fractional_precision, value.utcoffset())
    if t is IonType.BLOB:
        return (t, len(value))
    return t


def test_records_have_exactly_the_shape_of_real_qldb_records() -> None:
    real_block, real_rev, _ = real_s3()
    j = journal(0)
    blocks = [b for b in values(j, "BLOCK_SUMMARY") if len(b["payload"]["revisionSummaries"]) == 2]
    revs = [r for r in values(j, "REVISION_DETAILS") if "data" in r["payload"]["revision"]]
    assert blocks and revs
    for block in blocks:
        assert shape(block) == shape(real_block)
    for rev in revs:
        assert shape(rev) == shape(real_rev)


# --- the ladder: the oracle sees each forgery -----------------------------------------------------


def test_the_ground_truth_of_the_ladder() -> None:
    j = journal(0, RUNGS)
    truth = j.truth
    by_rung = {f.rung: f for f in truth.forgeries}
    assert set(by_rung) == set(RUNGS)
    forged_blocks = sorted(f.sequence_no for f in truth.forgeries)
    assert all(b - a >= 2 for a, b in itertools.pairwise(forged_blocks))
    verified, strict = truth.withheld("verified"), truth.withheld("chain-confirmed")
    for f in truth.revisions:
        rung = f.block_rung or f.forged_by
        if rung is None:
            assert f.authentic and f.hash == f.authentic_hash
            assert f.key not in strict
        elif rung == "V9":
            assert f.key not in verified and strict[f.key] == "V9"
        else:
            assert verified[f.key] == strict[f.key] == rung
    for rung in ("V2", "V3", "V4", "V7", "V8", "V9", "blockAddress", "tableInfo"):
        forgery = by_rung[rung]
        assert forgery.document_id is not None and forgery.version is not None
        fact = truth.fact(forgery.document_id, forgery.version)
        assert fact.forged_by == rung
        if rung in ("V2", "blockAddress", "tableInfo"):  # the revision hash is left as it was
            assert fact.hash == forgery.original_hash == fact.authentic_hash
        else:
            assert fact.hash == forgery.forged_hash != fact.authentic_hash
    assert by_rung["V5"].document_id is None
    # every revision is exactly one of: deliverable, withheld, awaiting confirmation
    for mode in forge.MODES:
        keys = [f.key for f in truth.deliverable(mode)] + list(truth.withheld(mode))
        keys += [f.key for f in truth.awaiting(mode)]
        assert sorted(keys) == sorted(f.key for f in truth.revisions)
    last = truth.blocks[-1]
    assert {f.sequence_no for f in truth.awaiting("chain-confirmed")} == {last}
    assert truth.awaiting("verified") == []
    assert {f.sequence_no for f in truth.doubtful("chain-confirmed")} == {
        by_rung[r].sequence_no - 1 for r in ("V4", "V5", "V7", "V8")
    } - {s for s in truth.blocks if not any(f.sequence_no == s for f in truth.revisions)}


@pytest.mark.parametrize("rung", RUNGS)
def test_the_oracle_finds_each_rung_and_nothing_else(rung: str) -> None:
    j = journal(1, (rung,))
    f = j.truth.forgeries[0]
    problems = check_stream(j.records)
    assert problems, rung
    joined = " | ".join(problems)
    expected = {
        "V2": ["V2"],
        "V3": [f"block {f.sequence_no}: V3 revisions"],
        "V4": ["V4"],
        "V7": ["V7"],
        "V8": ["V8"],
        "V9": [f"block {f.sequence_no + 1}: V9"],
        "V5": ["V5"],
        "blockAddress": ["V3 txId", "V3 revisions"],
        "tableInfo": ["tableInfo of"],
    }[rung]
    for token in expected:
        assert token in joined, (rung, problems)
    if rung in ("V2", "V4", "V7", "V8", "V5"):
        assert len(problems) == 1
    if rung in ("V3", "V9", "tableInfo"):
        assert len(problems) == 1


# --- (b) what qldbstream's Verifier says -----------------------------------------------------------
# (the tests asking for ``scanner`` run with the pure-Python stages and with qldbstream-native)


def verify_all(
    records: list[KinesisRecord], verifier: Verifier | None = None
) -> tuple[Verifier, list[Failure]]:
    """Deaggregate, decode and verify, as qldbstream.pipeline.batch does."""
    v = verifier or Verifier()
    failures: list[Failure] = []
    for kr in records:
        for user in deaggregate(kr):
            failures += v.verify(decode(user))
    return v, failures


def all_records(d: Delivery, order: list[ShardRecord] | None = None) -> list[KinesisRecord]:
    return [r.kinesis_record(d.stream_arn) for r in (order if order is not None else d.interleave(7))]


@pytest.mark.parametrize(
    ("shards", "aggregated", "duplicates", "reorder"),
    [(1, True, 0.0, 0), (1, False, 0.3, 4), (4, True, 0.2, 2), (4, False, 0.3, 3), (8, False, 0.2, 5)],
)
def test_the_verifier_finds_nothing_wrong_with_the_authentic_stream(
    scanner: str, shards: int, aggregated: bool, duplicates: float, reorder: int
) -> None:
    d = deliver(journal(2), shards, aggregated=aggregated, duplicates=duplicates, reorder=reorder, seed=5)
    v, failures = verify_all(all_records(d))
    assert failures == []
    assert v.crossref.unmatched() == []
    counts = v.tally.as_dict()
    n_revisions = len(d.journal.truth.revisions)
    assert counts["V2"]["passed"] + counts["V2b"]["passed"] >= n_revisions
    assert counts["V3"]["passed"] == n_revisions
    assert counts["V9"]["passed"] == len(d.journal.truth.blocks) - 1
    assert counts["V6"]["passed"] > 0


def expected_failures(f: forge.Forgery) -> set[tuple[str, int]]:
    if f.rung == "V9":
        return {("V9", f.sequence_no + 1)}  # reported at the successor, whose link breaks
    if f.rung in ("blockAddress", "tableInfo"):
        return set()  # journal order: see test_the_verifier_on_block_address_and_table_info
    return {(f.rung, f.sequence_no)}


@pytest.mark.parametrize("rung", RUNGS)
def test_the_verifier_reports_exactly_the_check_of_each_rung(scanner: str, rung: str) -> None:
    j = journal(1, (rung,))
    f = j.truth.forgeries[0]
    d = deliver(j, 1)
    v, failures = verify_all(d.kinesis_records("shardId-000000000000"))
    assert {(x.check, x.block_sequence_no) for x in failures} == expected_failures(f)
    assert len(failures) == len(expected_failures(f))
    if rung in ("V2", "V3"):
        assert (failures[0].document_id, failures[0].version) == (f.document_id, f.version)
    # a summary entry whose revision never came: the V3 rung (the authentic revision was replaced)
    # and blockAddress (the revision claims another block)
    missing = {(u.kind, u.block_sequence_no, u.document_id) for u in v.crossref.unmatched()}
    if rung in ("V3", "blockAddress"):
        assert missing == {("missing-revision", f.sequence_no, f.document_id)}
    else:
        assert missing == set()


def test_the_verifier_on_block_address_and_table_info(scanner: str) -> None:
    """Neither rung is a hash failure. The Verifier reports nothing for tableInfo in any order; for
    a revision moved to an earlier block it reports nothing when that block was already complete
    (journal order) and V3 against that block when the revision arrives first (reverse order)."""
    for rung in ("blockAddress", "tableInfo"):
        j = journal(1, (rung,))
        f = j.truth.forgeries[0]
        records = deliver(j, 1, aggregated=False).kinesis_records("shardId-000000000000")
        _, in_order = verify_all(records)
        _, reverse = verify_all(records[::-1])
        assert in_order == []
        if rung == "tableInfo":
            assert reverse == []
        else:
            target = int(f.detail.rsplit(" ", 1)[1])
            assert target < f.sequence_no
            assert [(x.check, x.block_sequence_no, x.document_id) for x in reverse] == [
                ("V3", target, f.document_id)
            ]


def test_the_verifier_on_the_whole_ladder_in_one_stream_over_shards(scanner: str) -> None:
    """All rungs at once, 4 shards, not aggregated, duplicates and reordering: each forged block
    gets its rung's failures and nothing else (the rungs do not interact)."""
    j = journal(0, RUNGS)
    d = deliver(j, 4, aggregated=False, duplicates=0.2, reorder=3, seed=11)
    _, failures = verify_all(all_records(d))
    got = {(x.check, x.block_sequence_no) for x in failures}
    expected = set().union(*(expected_failures(f) for f in j.truth.forgeries))
    # blockAddress may or may not be reported, depending on arrival order (see above)
    moved = next(f for f in j.truth.forgeries if f.rung == "blockAddress")
    assert got - {("V3", int(moved.detail.rsplit(" ", 1)[1]))} == expected


# --- (c) Kinesis delivery ---------------------------------------------------------------------------


def deaggregated_by_the_oracle(d: Delivery, shard_records: list[ShardRecord]) -> list[tuple[str, bytes]]:
    event = d.lambda_event(shard_records)
    out = []
    for u in iter_deaggregate_records(event["Records"]):
        out.append((u["kinesis"]["partitionKey"], base64.b64decode(u["kinesis"]["data"])))
    return out


@pytest.mark.parametrize("shards", [1, 4, 8])
@pytest.mark.parametrize("aggregated", [True, False])
def test_delivery_is_kinesis_like(shards: int, aggregated: bool) -> None:
    j = journal(3)
    reorder = 3
    d = deliver(j, shards, aggregated=aggregated, duplicates=0.25, reorder=reorder, seed=shards)
    ranges = shard_ranges(shards)
    assert [s.shard_id for s in d.shards] == [r[0] for r in ranges]
    assert ranges[0][1] == 0 and ranges[-1][2] == 2**128 - 1
    assert all(a[2] + 1 == b[1] for a, b in itertools.pairwise(ranges))
    seen: list[StreamRecord] = []
    for shard in d.shards:
        seqs = [int(r.sequence_number) for r in shard.records]
        assert seqs == sorted(set(seqs)) and all(len(r.sequence_number) == 56 for r in shard.records)
        arrivals = [r.arrival for r in shard.records]
        assert arrivals == sorted(arrivals)
        originals: dict[int, int] = {}
        for i, r in enumerate(shard.records):
            assert shard.starting_hash_key <= hash_key(r.partition_key) <= shard.ending_hash_key
            assert r.partition_key == r.user_records[0].partition_key
            if r.duplicate:  # a retry: the same put again, later, with a new sequence number
                first = shard.records[originals[r.ordinal]]
                assert (first.data, first.partition_key) == (r.data, r.partition_key) and originals[
                    r.ordinal
                ] < i
                assert r.user_records[0].kind != "CONTROL"
            else:
                assert r.ordinal not in originals
                originals[r.ordinal] = i
                seen.extend(r.user_records)
        # bounded reordering: a put overtakes only puts at most `reorder` journal positions before it
        ordinals = [r.ordinal for r in shard.records if not r.duplicate]
        for a in range(len(ordinals)):
            for b in range(a + 1, len(ordinals)):
                assert ordinals[a] - ordinals[b] <= reorder
        # the user records, as aws-kinesis-agg and qldbstream deaggregate them
        oracle = deaggregated_by_the_oracle(d, shard.records)
        ours = [
            (u.partition_key, u.data) for kr in d.kinesis_records(shard.shard_id) for u in deaggregate(kr)
        ]
        expected = [(u.partition_key, u.data) for r in shard.records for u in r.user_records]
        assert oracle == ours == expected
        for r in shard.records:
            assert (r.data[:4] == KPL_MAGIC) is aggregated
            if not aggregated:
                assert r.data == r.user_records[0].data
    # every user record exactly once among the original puts
    assert sorted(r.data for r in seen) == sorted(r.data for r in j.records)
    assert len(seen) == len(j.records)
    assert sum(r.duplicate for s in d.shards for r in s.records) > 0
    # CONTROL: CREATED first in its shard and earliest, COMPLETED last and latest
    everything = [r for s in d.shards for r in s.records]
    for shard in d.shards:
        for i, r in enumerate(shard.records):
            if r.user_records[0].control == "CREATED":
                assert i == 0 and r.arrival == min(x.arrival for x in everything)
            if r.user_records[0].control == "COMPLETED":
                assert i == len(shard.records) - 1 and r.arrival == max(x.arrival for x in everything)
    if aggregated:  # one aggregate per block: the summary, then its revisions
        for r in everything:
            kinds = [u.kind for u in r.user_records]
            assert kinds[0] in ("BLOCK_SUMMARY", "CONTROL") and set(kinds[1:]) <= {"REVISION_DETAILS"}
            assert len({u.sequence_no for u in r.user_records}) == 1


def test_without_reordering_each_shard_keeps_journal_order() -> None:
    j = journal(3)
    position = {r.data: i for i, r in enumerate(j.records)}
    for aggregated in (True, False):
        d = deliver(j, 4, aggregated=aggregated, seed=1)
        for shard in d.shards:
            order = [position[u.data] for r in shard.records for u in r.user_records]
            assert order == sorted(order)


def test_the_lambda_event_is_what_aws_lambda_gives() -> None:
    d = deliver(journal(0), 4, aggregated=True, seed=2)
    shard = max(d.shards, key=lambda s: len(s.records))
    event = d.lambda_event(shard.records[:3])
    assert len(event["Records"]) == 3
    for entry, r in zip(event["Records"], shard.records, strict=False):
        k = entry["kinesis"]
        assert k["kinesisSchemaVersion"] == "1.0"
        assert base64.b64decode(k["data"]) == r.data
        assert (k["sequenceNumber"], k["partitionKey"], k["approximateArrivalTimestamp"]) == (
            r.sequence_number,
            r.partition_key,
            r.arrival,
        )
        assert entry["eventSource"] == "aws:kinesis" and entry["eventName"] == "aws:kinesis:record"
        assert entry["eventID"] == f"{shard.shard_id}:{r.sequence_number}"
        assert entry["eventSourceARN"] == d.stream_arn
    json.dumps(event)  # plain JSON, as Lambda delivers it
    assert sum(len(e["Records"]) for e in d.lambda_events(batch_size=5)) == sum(
        len(s.records) for s in d.shards
    )
    kr = shard.records[0].kinesis_record(d.stream_arn)
    assert (kr.shard_id, kr.sequence_number, kr.stream_arn) == (
        shard.shard_id,
        shard.records[0].sequence_number,
        d.stream_arn,
    )


def test_partition_keys_follow_qldb() -> None:
    j = journal(0)
    for r in j.records:
        v = simpleion.loads(r.data)["payload"]
        if r.kind == "BLOCK_SUMMARY":
            assert r.partition_key == v["blockHash"].hex()
        elif r.kind == "REVISION_DETAILS":
            assert r.partition_key == v["revision"]["hash"].hex()
        else:
            assert len(r.partition_key) == 64 and int(r.partition_key, 16) >= 0


# --- (d) scattering over shards ----------------------------------------------------------------------


def test_four_unaggregated_shards_scatter_blocks_and_versions() -> None:
    j = journal(0)
    d = deliver(j, 4, aggregated=False, seed=3)
    shard_of = {u.data: s.shard_id for s in d.shards for r in s.records for u in r.user_records}
    by_block: dict[int, set[str]] = defaultdict(set)
    for r in j.records:
        if r.sequence_no is not None:
            by_block[r.sequence_no].add(shard_of[r.data])
    assert any(len(shards) >= 2 for shards in by_block.values())
    assert any(len(shards) >= 3 for shards in by_block.values())
    # some document has version n+1 on a shard other than version n: reading that shard first
    # delivers the versions out of order
    versions: dict[str, dict[int, str]] = defaultdict(dict)
    for r in j.records:
        if r.kind == "REVISION_DETAILS":
            assert r.document_id is not None and r.version is not None
            versions[r.document_id][r.version] = shard_of[r.data]
    found = None
    for doc, shards in versions.items():
        for v in shards:
            if v + 1 in shards and shards[v + 1] != shards[v]:
                found = (doc, v, shards[v], shards[v + 1])
    assert found is not None
    doc, v, first, second = found
    order = d.shard(second).records + d.shard(first).records  # one interleaving: shard `second` first
    seen = [u.version for r in order for u in r.user_records if u.document_id == doc]
    assert seen.index(v + 1) < seen.index(v)
