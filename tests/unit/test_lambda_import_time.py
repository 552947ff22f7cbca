"""``import qldbstream.runtimes.aws_lambda`` is a Lambda cold start: it must stay fast and light.

Each measurement is a fresh interpreter (nothing imported yet), timing the import alone; the
best of three absorbs a busy machine. ``-X importtime`` names the slowest imports when the
budget is exceeded.
"""

from __future__ import annotations

import json
import os
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


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("QLDBSTREAM_", "AWS_LAMBDA_", "_HANDLER"))
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
        env=clean | env,
    )


def test_import_qldbstream_looks_up_no_version_and_imports_no_powertools() -> None:
    proc = run_python(
        "import sys, qldbstream; "
        "assert '__version__' not in vars(qldbstream), 'version looked up at import'; "
        "assert 'aws_lambda_powertools' not in sys.modules; "
        "assert qldbstream.__version__ and vars(qldbstream)['__version__'] == qldbstream.__version__"
    )
    assert proc.returncode == 0, proc.stderr


LAMBDA = {"AWS_LAMBDA_FUNCTION_NAME": "orders-consumer", "_HANDLER": "qldbstream.aws_lambda.handler"}


def test_in_lambda_the_app_is_built_at_import_in_the_init_phase() -> None:
    proc = run_python(
        "from qldbstream.runtimes import aws_lambda; "
        "assert aws_lambda.configured_handler.cache_info().currsize == 1, 'not built at import'",
        **LAMBDA,
    )
    assert proc.returncode == 0, proc.stderr
    # outside Lambda, or when the function's own code is the handler, nothing is built at import
    for env in ({}, {**LAMBDA, "_HANDLER": "app.lambda_handler"}):
        proc = run_python(
            "from qldbstream.runtimes import aws_lambda; "
            "assert aws_lambda.configured_handler.cache_info().currsize == 0",
            **env,
        )
        assert proc.returncode == 0, proc.stderr


def test_a_configuration_error_at_init_is_logged_and_raised_by_the_first_invocation() -> None:
    proc = run_python(
        "from qldbstream.core.errors import ConfigurationError\n"
        "from qldbstream.runtimes import aws_lambda\n"
        "try:\n"
        "    aws_lambda.handler({'Records': []}, None)\n"
        "except ConfigurationError as exc:\n"
        "    print('RAISED', exc)\n",
        QLDBSTREAM_STOP_ON_FIRST_FAILURE="perhaps",
        **LAMBDA,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "RAISED qldbstream configuration:" in proc.stdout
        and "QLDBSTREAM_STOP_ON_FIRST_FAILURE" in proc.stdout
    )
    assert "qldbstream configuration error" in proc.stderr  # logged once at init, again at the invocation
