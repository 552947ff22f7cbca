"""The simulator's output verifies with an independent reference, and fails exactly where expected.

The reference shares no code with the simulator's hashing: ``aws_kinesis_agg`` deaggregates,
``amazon.ion.simpleion.loads`` decodes, PyPI ``ionhash`` hashes, and ``dot`` / the Merkle root
are written here from the spec (qldb-stream-format.md §4-§5). It reads the Lambda events the
simulator writes, exactly as a consumer would, and reports every failing check V1-V9. The set of
failures must equal the simulator's expected verdicts: empty for a clean stream, and exactly the
listed ones for each tamper.

Mapping a failing record back to the revision the simulator tampered uses the simulator's
delivery metadata (which journal record each Kinesis user record is); the checks themselves use
only the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from amazon.ion import simpleion
from aws_kinesis_agg.deaggregator import deaggregate_records
from qldbstream_tools.simulate import (
    DeliveryOptions,
    Failure,
    Simulation,
    SimulationConfig,
    Workload,
    parse_tamper,
    simulate,
)

from tests.support.oracles import import_ionhash, reference_dot

#: every test here runs with both scanners: pure Python and the compiled extension
pytestmark = pytest.mark.usefixtures("scanner")

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
H: Callable[[Any], bytes] = import_ionhash()

Key = tuple[Any, ...]


def merkle(hashes: list[bytes]) -> bytes:
    """calculateMerkleTreeRootHash (AWS Java sample): pairwise dot, an odd last node carried up."""
    level = list(hashes)
    if not level:
        return b""
    while len(level) > 1:
        nxt = [reference_dot(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def fold(hashes: Iterable[bytes]) -> bytes:
    acc = b""
    for h in hashes:
        acc = reference_dot(acc, h)
    return acc


def as_ion(value: Any) -> Any:
    """A simulator value as amazon-ion's simpleion types (what ionhash needs)."""
    return simpleion.loads(simpleion.dumps(value, binary=True))


class Reference:
    """A consumer-side verifier built only from reference libraries."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.failures: set[Key] = set()
        #: journal record index -> decoded record (duplicates collapse: same bytes, same index)
        self.decoded: dict[int, Any] = {}

    def read(self, events: Iterable[dict[str, Any]]) -> None:
        deliveries = {(d.shard_id, d.sequence_number): d for d in self.sim.deliveries}
        for event in events:
            for raw in event["Records"]:
                k = raw["kinesis"]
                delivery = deliveries[(raw["eventID"].split(":")[0], k["sequenceNumber"])]
                data = base64.b64decode(k["data"])
                if data[:4] == KPL_MAGIC and hashlib.md5(data[4:-16]).digest() != data[-16:]:
                    first = self.sim.records[delivery.records[0]]
                    self.failures.add(("V1", first.sequence_no))
                    continue
                users = deaggregate_records([raw])
                assert len(users) == len(delivery.records)
                for index, user in zip(delivery.records, users, strict=True):
                    payload = base64.b64decode(user["kinesis"]["data"])
                    if data[:4] == KPL_MAGIC:
                        # inner partition key = hex of the record's hash (or its forged hash)
                        assert user["kinesis"]["partitionKey"] == self.sim.records[index].partition_key
                    self.decoded[index] = simpleion.loads(payload)

    def verify(self) -> set[Key]:
        blocks: dict[int, tuple[int, Any]] = {}
        by_hash: dict[bytes, list[Any]] = {}
        for index, rec in self.decoded.items():
            assert rec["qldbStreamArn"] == self.sim.stream_arn
            if rec["recordType"] == "BLOCK_SUMMARY":
                blocks[rec["payload"]["blockAddress"]["sequenceNo"]] = (index, rec["payload"])
            elif rec["recordType"] == "REVISION_DETAILS":
                self._v2(index, rec["payload"]["revision"])
                by_hash.setdefault(bytes(rec["payload"]["revision"]["hash"]), []).append(rec["payload"])
        for seq, (_, p) in blocks.items():
            self._block(seq, p, by_hash)
            prev = blocks.get(seq - 1)
            if prev is not None and bytes(prev[1]["blockHash"]) != bytes(p["previousBlockHash"]):
                self.failures.add(("V9", seq))
        return self.failures

    def _v2(self, index: int, revision: Any) -> None:
        metadata_hash = H(revision["metadata"])
        if "data" in revision:
            expected = reference_dot(metadata_hash, H(revision["data"]))
        elif "dataHash" in revision:
            expected = reference_dot(metadata_hash, bytes(revision["dataHash"]))
        else:
            expected = metadata_hash  # deleted: the spec's inference V2b
        if expected != bytes(revision["hash"]):
            original = self.sim.records[index]
            self.failures.add(("V2", original.sequence_no, original.document_id, original.version))

    def _block(self, seq: int, p: Any, by_hash: dict[bytes, list[Any]]) -> None:
        entries = [bytes(e) for e in p["entriesHashList"]]
        journal_block = self.sim.journal.block(seq)
        for i, s in enumerate(p["revisionSummaries"]):
            if "documentId" not in s:
                continue
            ok = any(
                r["revision"]["metadata"]["id"] == s["documentId"]
                and r["revision"]["blockAddress"]["sequenceNo"] == seq
                and r["revision"]["blockAddress"]["strandId"] == p["blockAddress"]["strandId"]
                and r["revision"]["metadata"]["txId"] == p["transactionId"]
                for r in by_hash.get(bytes(s["hash"]), [])
            )
            if not ok:
                self.failures.add(("V3", seq, journal_block.summaries[i][1]))
        if merkle([bytes(s["hash"]) for s in p["revisionSummaries"]]) not in entries:
            self.failures.add(("V4", seq))
        if H(p["transactionInfo"]) not in entries or (
            "redactionInfo" in p and H(p["redactionInfo"]) not in entries
        ):
            self.failures.add(("V5", seq))
        params = self.sim.ledger.statement_parameters[seq]
        for k, st in enumerate(p["transactionInfo"]["statements"]):
            digest = fold([H(st["statement"]), *(H(as_ion(v)) for v in params[k])])
            if digest != bytes(st["statementDigest"]):
                self.failures.add(("V6", seq, k))
        if merkle(entries) != bytes(p["entriesHash"]):
            self.failures.add(("V7", seq))
        if reference_dot(bytes(p["entriesHash"]), bytes(p["previousBlockHash"])) != bytes(p["blockHash"]):
            self.failures.add(("V8", seq))


def key(f: Failure) -> Key:
    if f.check == "V2":
        return (f.check, f.sequence_no, f.document_id, f.version)
    if f.check == "V3":
        return (f.check, f.sequence_no, f.document_id)
    if f.check == "V6":
        return (f.check, f.sequence_no, f.statement)
    return (f.check, f.sequence_no)


def reference_failures(sim: Simulation, batch_size: int = 100) -> set[Key]:
    buf = io.StringIO()
    sim.write_jsonl(buf, batch_size=batch_size)
    ref = Reference(sim)
    ref.read(json.loads(line) for line in buf.getvalue().splitlines())
    blocks = {r.sequence_no for r in sim.records if r.record_type == "BLOCK_SUMMARY"}
    readable = {sim.records[i].sequence_no for i in ref.decoded}
    assert blocks - readable == set(sim.expected.unreadable)
    return ref.verify()


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "not-aggregated"])
def test_clean_stream_verifies_with_the_reference(aggregate: bool) -> None:
    started = time.perf_counter()
    sim = simulate(
        SimulationConfig(
            seed=11,
            workload=Workload(transactions=160, deletes=6, redactions=4),
            delivery=DeliveryOptions(aggregate=aggregate, shards=3, duplicate_rate=0.1, reorder_window=4),
        )
    )
    assert len(sim.ledger.revisions) >= 300
    assert sim.summary()["deletes"] == 6
    assert sim.summary()["redactions"] == 4
    assert sim.summary()["duplicates"] > 0
    assert reference_failures(sim) == set()
    assert sim.expected.clean
    assert time.perf_counter() - started < 60


CONFIG = SimulationConfig(seed=5, workload=Workload(transactions=120, deletes=4, redactions=3))
PROBE = simulate(CONFIG)


def live(table: str, nth: int = 0) -> str:
    """``revision=DOC@V`` of the nth revision of ``table`` that shows its data in the stream."""
    revs = [r for r in PROBE.ledger.revisions if r.table == table and r.data is not None and not r.redacted]
    r = revs[nth]
    return f"revision={r.document_id}@{r.version}"


def block_with(predicate: Callable[[Any], bool], nth: int = 0) -> int:
    return [b.sequence_no for b in PROBE.journal.blocks if predicate(b)][nth]


LAST = PROBE.journal.blocks[-1].sequence_no
NO_PARAMS = block_with(lambda b: any(not s.parameters for s in b.statements) and b.kind == "account_review")
TAMPERS = [
    f"{live('Transactions')}:data.amount",
    f"{live('Customers')}:data.address.city",
    f"{live('Customers', 1)}:data.middleName",
    f"{live('Accounts')}:metadata.txTime",
    f"{live('Accounts', 1)}:metadata.id",
    f"{live('Accounts', 2)}:metadata.txId",
    f"{live('Transactions', 1)}:hash",
    f"{live('Transactions', 2)}:blockAddress.sequenceNo",
    f"{live('Transactions', 3)}:tableInfo.tableName",
    f"{live('Accounts', 3)}+rehash:data.balance",
    f"{live('Accounts', 4)}+rehash-block:metadata.version",
    f"{live('Customers', 2)}+rehash:metadata.txId",
    f'{live("Transactions", 4)}:data.newField="injected"',
    "block=12:blockHash",
    "block=15:previousBlockHash",
    "block=18:entriesHash",
    "block=21:entriesHashList[0]",
    "block=24:entriesHashList[1]",
    "block=27:entriesHashList[3]",
    "block=30:transactionInfo.statements[0].statement",
    f"block={NO_PARAMS}:transactionInfo.statements[1].statement",
    f"block={block_with(lambda b: len(b.statements) > 1, 20)}:transactionInfo.statements[1].statementDigest",
    "block=36:transactionInfo.statements[0].startTime",
    f"block={block_with(lambda b: len(b.revisions) > 1, 15)}:transactionInfo.documents.{{doc}}.statements[0]",
    "block=39+rehash-block:transactionInfo.statements[0].statement",
    "block=42:revisionSummaries[0].hash",
    "block=45:revisionSummaries[0].documentId",
    "block=48:transactionId",
    "block=1:transactionId",
    "block=51:blockTimestamp",
    "block=54+rehash-block:revisionSummaries[0].hash",
    "block=2:revisionSummaries[1].hash",
    f"block={block_with(lambda b: b.redaction_info is not None)}:redactionInfo.revisions[0].version",
    f"block={block_with(lambda b: b.redaction_info is not None, 1)}:entriesHashList[4]",
    f"{live('Transactions', 5)}+rehash-block:data.amount".replace(
        live("Transactions", 5),
        f"revision={PROBE.journal.blocks[-1].revisions[0].document_id}"
        f"@{PROBE.journal.blocks[-1].revisions[0].version}",
    ),
]
# transactionInfo.documents.<documentId>.statements[0] of that block's first document
TAMPERS = [
    t.replace("{doc}", PROBE.journal.block(int(t.split("=")[1].split(":")[0])).revisions[0].document_id)
    if "{doc}" in t
    else t
    for t in TAMPERS
]


def _with_tampers(specs: list[str], aggregate: bool, **delivery: Any) -> Simulation:
    return simulate(
        SimulationConfig(
            seed=CONFIG.seed,
            workload=CONFIG.workload,
            delivery=DeliveryOptions(aggregate=aggregate, **delivery),
            tampers=tuple(parse_tamper(s) for s in specs),
        )
    )


@pytest.mark.parametrize("spec", TAMPERS)
def test_each_tamper_fails_exactly_the_expected_checks(spec: str) -> None:
    sim = _with_tampers([spec], aggregate=False, shards=2, reorder_window=3)
    # tampering happens after hashing: the journal is the untampered one
    assert sim.journal.blocks[-1].block_hash == PROBE.journal.blocks[-1].block_hash
    expected = {key(f) for f in sim.expected.failures}
    assert reference_failures(sim) == expected, sim.expected.tampers[0].to_json()


def test_many_tampers_at_once_aggregated_with_duplicates() -> None:
    sim = _with_tampers(TAMPERS, aggregate=True, shards=4, duplicate_rate=0.2, reorder_window=2)
    expected = {key(f) for f in sim.expected.failures}
    assert len(expected) > 40
    assert reference_failures(sim, batch_size=7) == expected


def test_tamper_of_a_redacted_and_a_deleted_revision() -> None:
    probe = _with_tampers([], aggregate=True)
    redacted = next(r for r in probe.ledger.revisions if r.redacted)
    deleted = next(r for r in probe.ledger.revisions if r.op == "delete")
    sim = _with_tampers(
        [
            f"revision={redacted.document_id}@{redacted.version}:dataHash",
            f"revision={deleted.document_id}@{deleted.version}:metadata.txTime",
        ],
        aggregate=True,
    )
    expected = {key(f) for f in sim.expected.failures}
    assert expected == {
        ("V2", redacted.sequence_no, redacted.document_id, redacted.version),
        ("V2", deleted.sequence_no, deleted.document_id, deleted.version),
    }
    assert reference_failures(sim) == expected


def test_corrupt_kpl_md5_fails_v1_only() -> None:
    sim = _with_tampers(["kpl=20:md5"], aggregate=True, duplicate_rate=0.3)
    assert {key(f) for f in sim.expected.failures} == {("V1", 20)}
    assert sim.expected.unreadable == (20,)
    assert reference_failures(sim) == {("V1", 20)}
