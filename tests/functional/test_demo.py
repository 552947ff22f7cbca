"""The demo's slice end to end on the embedded local AWS: it must catch exactly what was planted."""

from __future__ import annotations

import pytest

from qldbstream.cli import main
from qldbstream.demo import DemoOptions, run_demo


def test_demo_catches_the_planted_tamper_and_nothing_else() -> None:
    steps: list[str] = []
    result = run_demo(
        DemoOptions(transactions=120, shards=3, duplicate_rate=0.05, reorder_window=4, seed=11),
        lambda what, done, total: steps.append(what),
    )
    assert result.matches, (result.expected, result.found)
    assert [c for c, _, _ in result.expected] == ["V2"]
    report = result.report
    assert report.errors == []
    # one aggregate per block (its summary and revisions); duplicates are delivered again
    assert report.verifier.tally.counts["V1"][0] >= result.summary["blocks"]
    assert report.verifier.tally.counts["V1"][1] == 0
    # every journal record was read back, duplicates included
    assert report.records >= result.summary["journalRecords"]
    assert report.verifier.tally.counts["V9"][1] == 0
    assert {
        "simulating the ledger",
        "putting records into Kinesis",
        "reading every shard and verifying",
    } <= set(steps)


def test_demo_reports_a_chain_break(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--transactions", "60", "--shards", "2", "--tamper", "block=20:previousBlockHash"])
    out = capsys.readouterr().out
    assert code == 0
    assert "The planted tampering was caught" in out
    assert "V8" in out and "V9" in out
