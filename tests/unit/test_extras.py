"""``rich`` (extra ``cli``) and ``prometheus-client`` (extra ``prometheus``) are optional.

The Lambda import path imports neither; a command or a backend that needs one it cannot find says,
in one line, which extra to install. Each case runs in a fresh interpreter: ``sys.modules[name] =
None`` there makes the package look uninstalled without touching this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qldbstream.cli.command import version_line
from qldbstream.core import native

ROOT = Path(__file__).resolve().parents[2]


def fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


@pytest.mark.parametrize("module", ["qldbstream.aws_lambda", "qldbstream.runtimes.aws_lambda"])
def test_the_lambda_import_path_imports_neither_extra(module: str) -> None:
    done = fresh(
        f"import json, sys; import {module} as m; m.make_handler\n"
        "extras = ('rich', 'prometheus_client')\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in extras)))"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_command_without_rich_names_the_cli_extra() -> None:
    done = fresh(
        "import sys; sys.modules['rich'] = None\n"
        "from qldbstream.cli.command import main\n"
        "sys.exit(main(['handlers']))"
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines == [
        "qldbstream handlers: qldbstream handlers (without --json) needs rich, which is not installed: "
        "pip install 'qldbstream[cli]'"
    ], done.stderr


def test_json_output_needs_no_rich() -> None:
    done = fresh(
        "import sys; sys.modules['rich'] = None\n"
        "from qldbstream.cli.command import main\n"
        "sys.exit(main(['handlers', '--json']))"
    )
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_prometheus_metrics_without_prometheus_client_names_the_prometheus_extra() -> None:
    done = fresh(
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from qldbstream.core.errors import ConfigurationError\n"
        "from qldbstream.io.metrics import PrometheusMetrics\n"
        "try:\n    PrometheusMetrics()\n"
        "except ConfigurationError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "metrics = prometheus needs prometheus-client, which is not installed: "
        "pip install 'qldbstream[prometheus]'"
    )


def test_version_says_which_hot_path_runs() -> None:
    line = version_line()
    if native.available():
        assert line.startswith("qldbstream 0.1.0 (compiled hot path: qldbstream-native "), line
    else:
        assert line.startswith("qldbstream 0.1.0 (pure Python: qldbstream-native "), line
    done = fresh(
        "import sys; sys.modules['qldbstream_native'] = None\n"
        "from qldbstream.cli.command import main\n"
        "main(['--version'])"
    )
    assert done.returncode == 0, done.stderr
    # the extension cannot be imported: the pure-Python path runs, whatever the metadata says
    assert done.stdout.startswith("qldbstream 0.1.0 (pure Python: qldbstream-native "), done.stdout
    assert "does not load" in done.stdout or "not installed" in done.stdout, done.stdout


def test_verify_json_needs_no_rich_and_the_table_names_the_extra() -> None:
    """``--json`` and the progress display off a terminal draw nothing: no rich needed; the table does."""
    block = ROOT / "tests" / "fixtures" / "archive-shapes" / "block.ion"
    run = (
        "import sys; sys.modules['rich'] = None\n"
        "from qldbstream.cli.command import main\n"
        "sys.exit(main(['verify', {flags}'{block}']))"
    )
    done = fresh(run.format(flags="'--json', ", block=block))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    done = fresh(run.format(flags="", block=block))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "qldbstream verify: the report (--json needs none) needs rich, which is not installed: "
        "pip install 'qldbstream[cli]'"
    ]
