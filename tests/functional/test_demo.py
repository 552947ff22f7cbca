"""``qldbstream demo`` end to end on the embedded local AWS (moto in-process on 127.0.0.1).

The expectations here are computed from the simulator again, independently of the demo's own
checks (``qldbstream_tools.demo.truth``): what was planted, how often the tampered record was delivered,
how many revisions every handler must hold, the velocity windows, the bursts.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from qldbstream_tools.cli.demo import render_report
from qldbstream_tools.demo import DemoOptions, DemoProgress, run_demo, simulation
from qldbstream_tools.simulate import Simulation
from rich.console import Console

from qldbstream.cli import main

USER_RECORDS = 'qldbstream_records_in_total{stage="user"}'
#: small, with duplicates and reordering over three shards; the seed plants bursts and a wire
SMALL = DemoOptions(seed=3, transactions=60, shards=3, duplicate_rate=0.1, reorder_window=4)


def copies_of(sim: Simulation, document_id: str, version: int) -> int:
    """How many Kinesis records carry this revision (duplicate deliveries included)."""
    index = next(
        i
        for i, r in enumerate(sim.records)
        if r.record_type == "REVISION_DETAILS" and (r.document_id, r.version) == (document_id, version)
    )
    return sum(index in d.records for d in sim.deliveries)


def revision_redeliveries(sim: Simulation, skip: tuple[str, int]) -> int:
    """Deliveries of a REVISION_DETAILS beyond its first: what a handler de-duplicates."""
    seen: Counter[int] = Counter(i for d in sim.deliveries for i in d.records)
    return sum(
        n - 1
        for i, n in seen.items()
        if sim.records[i].record_type == "REVISION_DETAILS"
        and (sim.records[i].document_id, sim.records[i].version) != skip
    )


def ledger_velocity(sim: Simulation, skip: tuple[str, int]) -> dict[str, tuple[int, int, Decimal]]:
    """Per minute (ISO start): Transactions inserts, distinct accounts, total amount."""
    windows: dict[int, list[Any]] = defaultdict(lambda: [0, set(), Decimal(0)])
    for r in sim.ledger.revisions:
        if r.table != "Transactions" or r.op != "insert" or r.redacted or (r.document_id, r.version) == skip:
            continue
        data: Any = r.data
        w = windows[r.tx_time_ms - r.tx_time_ms % 60_000]
        w[0] += 1
        w[1].add(data["accountId"])
        w[2] += data["amount"]
    from datetime import UTC, datetime

    return {
        datetime.fromtimestamp(start / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"): (
            n,
            len(accounts),
            total,
        )
        for start, (n, accounts, total) in windows.items()
    }


def test_the_demo_matches_the_simulators_ground_truth(tmp_path: Path) -> None:
    options = replace(SMALL, output=tmp_path / "out")
    seen: list[DemoProgress] = []
    result = run_demo(options, seen.append)
    sim = simulation(options)
    r = result.report
    assert result.ok, [c for c in result.checks if not c.ok]
    assert r["ok"] and all(c["ok"] for c in r["checks"])
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == r

    # what was planted: one V2 failure on one revision, delivered `copies` times
    (planted,) = sim.expected.failures
    assert planted.check == "V2" and planted.document_id is not None and planted.version is not None
    tampered = (planted.document_id, planted.version)
    copies = copies_of(sim, *tampered)
    assert r["verification"]["failed"] == {"V2": copies}
    assert r["verification"]["checks"]["V9"]["failed"] == 0
    letters = r["deadLetters"]["entries"]
    assert len(letters) == copies == len(list((tmp_path / "out" / "dlq").glob("*.json")))
    assert {(e["stage"], e["documentId"], e["version"], tuple(e["checks"])) for e in letters} == {
        ("verify", planted.document_id, planted.version, ("V2",))
    }

    # every other revision, exactly once, in every handler that takes them all
    others = {(rev.document_id, rev.version) for rev in sim.ledger.revisions} - {tampered}
    audit = Counter(
        json.loads(line)["key"] for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()
    )
    assert audit == Counter({f"{d}#{v}": 1 for d, v in others})
    assert r["audit"]["lines"] == r["export"]["rows"] == r["replica"]["revisions"] == len(others)
    assert r["delivered"]["audit"] == r["delivered"]["export"] == r["delivered"]["workflow"] == len(others)
    assert r["workflow"]["executions"]["revision:succeeded"] == len(others)
    assert r["replica"]["matched"] == len(others) and r["replica"]["verified"]
    assert r["replica"]["region"] == "us-west-2" and r["replica"]["missing"] == 0
    assert r["worker"]["kinesisRecords"] == len(sim.deliveries)
    assert r["worker"]["userRecords"] == sum(len(d.records) for d in sim.deliveries)
    assert r["worker"]["reason"] == "caught-up"
    assert all(s["checkpointInTable"] for s in r["worker"]["shards"])
    assert r["deduplicated"]["byHandler"]["audit"] == revision_redeliveries(sim, tampered) > 0

    # velocity windows: the ledger's per-minute count, distinct accounts and total
    velocity = ledger_velocity(sim, tampered)
    assert r["velocity"]["windows"] == r["velocity"]["dynamodbItems"] == len(velocity)
    for row in r["velocity"]["shown"]:
        n, accounts, total = velocity[row["windowStart"]]
        assert (row["transactions"], row["uniqueAccounts"]) == (n, accounts)
        assert Decimal(row["totalAmount"]) == total.quantize(Decimal("0.01"))

    # fraud: the planted bursts and wires, to SQS and the bus
    fraud = r["fraud"]
    bursts = [b for b in sim.ledger.bursts if len(b.document_ids) >= 5]
    wires = [
        t
        for txs in sim.ledger.account_transactions.values()
        for t in txs
        if t.amount >= 10_000 and t.document_id != planted.document_id
    ]
    assert bursts and wires
    assert fraud["byRule"]["rapid_small_transactions"] >= len(bursts)
    assert fraud["byRule"]["high_value"] == len(wires)
    assert fraud["alerts"] == fraud["sqsMessages"] == fraud["busAlerts"]
    routes = r["workflow"]["routes"]
    assert routes["high value: risk + notify"] == {"succeeded": len(wires)}
    assert r["workflow"]["snsMessages"] == routes["fraud: blocked + SNS"]["succeeded"] >= len(bursts)

    # Prometheus: scraped over HTTP while the worker ran, and once more at the end
    metrics = r["metrics"]
    during = [s for s in metrics["scrapes"] if s["phase"] == "during"]
    assert metrics["scrapesDuringRun"] >= 1
    assert any(s["values"][USER_RECORDS] > 0 for s in during)
    (final,) = [s for s in metrics["scrapes"] if s["phase"] == "final"]
    assert final["values"][USER_RECORDS] == r["worker"]["userRecords"]
    assert final["values"]['qldbstream_verification_failures_total{check="V2"}'] == copies

    # the live display got per-shard progress while the worker ran
    live = [p for p in seen if p.stage == "worker"]
    assert live and live[-1].processed == r["worker"]["userRecords"]
    assert {s.shard_id for s in live[-1].shards} == {s["shardId"] for s in r["worker"]["shards"]}

    text = io.StringIO()
    render_report(result, Console(file=text, width=120))
    rendered = text.getvalue()
    assert "All checks passed" in rendered and "rapid_small_transactions" in rendered
    assert USER_RECORDS in rendered and str(result.output) in rendered


def test_a_block_that_fails_v8_withholds_its_revisions_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["demo", "--transactions", "60", "--shards", "2", "--tamper", "block=20:previousBlockHash"]
    code = main([*args, "--output", str(out), "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    assert set(report["verification"]["failed"]) == {"V8", "V9"}
    letters = report["deadLetters"]["entries"]
    # block 20 fails V8: it vouches for none of its revisions, so they are dead-lettered with it
    sim = simulation(DemoOptions(transactions=60, shards=2, tamper="block=20:previousBlockHash"))
    in_block = {(r.document_id, r.version) for r in sim.ledger.revisions if r.sequence_no == 20}
    assert in_block
    assert {(e["documentId"], e["version"]) for e in letters if e["documentId"]} == in_block
    assert {e["blockSequenceNo"] for e in letters} == {20}
    assert {c for e in letters for c in e["checks"]} == {"V8", "V9"}
    assert report["audit"]["lines"] == report["export"]["rows"] == len(sim.ledger.revisions) - len(in_block)
    assert report["output"] == str(out.resolve())


def test_the_output_directory_must_be_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.txt").write_text("from an earlier run")
    assert main(["demo", "--output", str(tmp_path), "--no-progress"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
