"""``import qldbstream.runtimes.aws_lambda`` is a Lambda cold start: it must stay fast and light.

Each measurement is a fresh interpreter (nothing imported yet), timing the import alone; the
best of three absorbs a busy machine. ``-X importtime`` names the slowest imports when the
budget is exceeded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BUDGET_SECONDS = 1.0
#: imported lazily, on first use, never by the module itself
HEAVY = ("boto3", "botocore", "rich", "moto", "amazon.ion", "urllib3")

_PROBE = """
import json, sys, time
start = time.perf_counter()
import qldbstream.runtimes.aws_lambda
elapsed = time.perf_counter() - start
print(json.dumps({"elapsed": elapsed, "modules": sorted(sys.modules)}))
"""

ROOT = Path(__file__).resolve().parents[2]


def cold_import() -> tuple[float, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["elapsed"], result["modules"], proc.stderr


def slowest(importtime: str, n: int = 10) -> str:
    rows = []
    for line in importtime.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    return ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in sorted(rows, reverse=True)[:n])


def test_a_cold_import_takes_under_a_second_and_pulls_in_no_heavy_module() -> None:
    runs = [cold_import() for _ in range(3)]
    elapsed, modules, importtime = min(runs, key=lambda r: r[0])
    assert elapsed < BUDGET_SECONDS, f"cold import took {elapsed:.2f}s; slowest: {slowest(importtime)}"
    heavy = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)]
    assert heavy == [], f"imported at cold start: {heavy}"
    assert "qldbstream.runtimes.aws_lambda" in modules
