"""The documented third-party plugin example (examples/large-transfers) is installed with pip,
found through its entry point and run by an app configured from the environment alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.streams import simulation

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "large-transfers"

RUN = """
import json, sys
from qldbstream.app.assembly import App
from tests.support.streams import kinesis_records, simulation

app = App.from_env()
pipeline = app.pipeline()
sim = simulation(int(sys.argv[1]), seed=5, duplicates=0.2)
for shard, records in kinesis_records(sim).items():
    for start in range(0, len(records), 10):
        assert pipeline.process(shard, records[start:start + 10]).first_unfinished is None
app.close()
print(json.dumps([h.name for h in app.handlers]))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        cwd=tmp_path_factory.mktemp("build"),
    )
    return target


def env_with(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLDBSTREAM_")}
    root = str(Path(__file__).parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(site), root])
    env.update(extra)
    return env


def test_the_plugin_is_listed_through_its_entry_point(installed: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qldbstream", "handlers", "--json"],
        env=env_with(installed, QLDBSTREAM_HANDLERS="large-transfers"),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["large-transfers"]["distribution"] == "qldbstream-example-large-transfers"
    assert rows["large-transfers"]["active"] is True


def test_the_plugin_runs_with_exactly_once_output(installed: Path, tmp_path: Path) -> None:
    output = tmp_path / "large.jsonl"
    env = env_with(
        installed,
        QLDBSTREAM_HANDLERS="large-transfers",
        QLDBSTREAM_HANDLER_LARGE_TRANSFERS__THRESHOLD="5000",
        QLDBSTREAM_HANDLER_LARGE_TRANSFERS__PATH=str(output),
        QLDBSTREAM_DLQ=f"dir:{tmp_path / 'dlq'}",
        QLDBSTREAM_LOG_LEVEL="WARNING",
    )
    result = subprocess.run(
        [sys.executable, "-c", RUN, "150"], env=env, check=True, capture_output=True, text=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["large-transfers"]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    sim = simulation(150, seed=5, duplicates=0.2)
    expected = {
        r.document_id
        for r in sim.ledger.revisions
        if r.table == "Transactions" and r.op == "insert" and Decimal(str(r.data["amount"])) >= 5000
    }
    assert expected, "the simulated bank has high-value transactions"
    ids = [line["documentId"] for line in lines]
    assert len(ids) == len(set(ids))  # duplicates were delivered; each transaction written once
    assert set(ids) == expected


def test_bad_plugin_settings_fail_at_start_up_with_one_line(installed: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qldbstream", "handlers", "--check"],
        env=env_with(
            installed,
            QLDBSTREAM_HANDLERS="large-transfers",
            QLDBSTREAM_HANDLER_LARGE_TRANSFERS__THRESHOLD="lots",
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "qldbstream handlers: large-transfers: threshold 'lots' is not a number"
    ]
