"""The rooms' import rules (``qldbstream/core/README.md``, the issue "Layout"), enforced.

* ``qldbstream/core/``: pure stages. Every module imports only the standard-library modules in
  :data:`CORE_STDLIB` (no ``time``, ``os``, ``socket``, ``subprocess``, ``urllib``, ``http``,
  ``sqlite3``, ``threading``, ``random``, ...), ``amazon.ion``, ``qldbstream_native`` and
  ``qldbstream.core`` itself - never ``qldbstream.api`` or an outer room, never ``boto3``,
  ``botocore``, ``psycopg``; and calls no clock (``time.time()``, ``time.monotonic()``,
  ``datetime.now()``/``utcnow()``/``today()``) and no ``open()``. Checked on the source (every
  import, also inside functions and ``TYPE_CHECKING``), then by importing each module in a fresh
  interpreter.
* ``qldbstream/pipeline/``: policy. No ``boto3``/``botocore``, nothing from ``qldbstream.io``,
  ``qldbstream.app``, ``qldbstream.runtimes``, ``qldbstream.cli``, ``qldbstream.demo`` or
  ``qldbstream.simulate``.

A failure names the module, the line and the import or call.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qldbstream"

#: the standard library the core may use: data, text, hashing, typing - nothing that reads the
#: clock, the environment, files, the network, processes or randomness. ``logging`` is allowed
#: (a stage may log what it decides; handlers and masking are configured outside the core);
#: ``importlib`` is for :mod:`qldbstream.core.native`, which imports the core's own stages lazily.
CORE_STDLIB = frozenset(
    {
        "__future__",
        "abc",
        "base64",
        "binascii",
        "bisect",
        "collections",
        "contextlib",
        "copy",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "functools",
        "hashlib",
        "hmac",
        "importlib",
        "itertools",
        "json",
        "logging",
        "math",
        "operator",
        "re",
        "struct",
        "sys",
        "types",
        "typing",
    }
)
#: third-party packages the core may import: the Ion library and the compiled hot path
CORE_THIRD_PARTY = ("amazon.ion", "qldbstream_native")
#: module -> further packages it alone may import, and why (none today)
CORE_EXCEPTIONS: dict[str, dict[str, str]] = {}

#: ``<receiver>.<method>()`` calls that read the clock, and the receivers they are forbidden on
CLOCK_CALLS = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"},
    "datetime": {"now", "utcnow", "today"},
    "date": {"today"},
}

PIPELINE_FORBIDDEN = (
    "boto3",
    "botocore",
    "qldbstream.io",
    "qldbstream.app",
    "qldbstream.runtimes",
    "qldbstream.cli",
    "qldbstream.demo",
    "qldbstream.simulate",
)


def _modules(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


def _rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def _dotted(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, relative ones resolved; ``from m import n``
    gives ``m`` and ``m.n`` (``n`` may be a module)."""
    dotted = _dotted(path, root)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def core_import_offences(path: Path, root: Path = ROOT) -> list[str]:
    extra = CORE_EXCEPTIONS.get(_rel(path, root), {})
    offences = []
    for line, module in imports(path, root):
        top = module.split(".")[0]
        if top == "qldbstream":
            ok = _within(module, "qldbstream.core")
        else:
            ok = top in CORE_STDLIB or top in extra or any(_within(module, p) for p in CORE_THIRD_PARTY)
        if not ok:
            offences.append(f"{_rel(path, root)}:{line}: imports {module}")
    return sorted(set(offences), key=lambda o: (int(o.split(":")[1]), o))


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def core_call_offences(path: Path, root: Path = ROOT) -> list[str]:
    offences = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("open", "__import__"):
            offences.append(f"{_rel(path, root)}:{node.lineno}: calls {func.id}()")
        elif isinstance(func, ast.Attribute) and func.attr in CLOCK_CALLS.get(
            _receiver(func.value) or "", ()
        ):
            clock = f"{_receiver(func.value)}.{func.attr}()"
            offences.append(f"{_rel(path, root)}:{node.lineno}: reads the clock: {clock}")
    return offences


def pipeline_offences(path: Path, root: Path = ROOT) -> list[str]:
    return [
        f"{_rel(path, root)}:{line}: imports {module}"
        for line, module in imports(path, root)
        if any(_within(module, p) for p in PIPELINE_FORBIDDEN)
    ]


CORE = _modules("core")
PIPELINE = _modules("pipeline")

#: pipeline modules known to break the rule, each with why; strict: the test fails once fixed, so
#: the entry must then go
PIPELINE_KNOWN: dict[str, str] = {}


def _pipeline_params() -> list[object]:
    out: list[object] = []
    for path in PIPELINE:
        reason = PIPELINE_KNOWN.get(_rel(path))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(path, id=_rel(path), marks=marks))
    return out


def test_the_rooms_have_modules() -> None:
    assert len(CORE) > 15 and len(PIPELINE) > 4


@pytest.mark.parametrize("path", CORE, ids=_rel)
def test_core_imports_only_the_allowlist(path: Path) -> None:
    offences = core_import_offences(path)
    assert not offences, "the core imports outside its allowlist (qldbstream/core/README.md):\n" + "\n".join(
        offences
    )


@pytest.mark.parametrize("path", CORE, ids=_rel)
def test_core_reads_no_clock_and_opens_no_file(path: Path) -> None:
    offences = core_call_offences(path)
    assert not offences, "the core must take the time and data from its caller:\n" + "\n".join(offences)


@pytest.mark.parametrize("path", _pipeline_params())
def test_pipeline_imports_no_aws_sdk_and_no_outer_room(path: Path) -> None:
    offences = pipeline_offences(path)
    assert not offences, "the pipeline imports an edge or an outer room:\n" + "\n".join(offences)


_FRESH = """
import importlib, sys
importlib.import_module(sys.argv[1])
bad = ("boto3", "botocore", "qldbstream.api", "qldbstream.io", "qldbstream.app", "qldbstream.pipeline",
       "qldbstream.runtimes", "qldbstream.cli", "qldbstream.demo", "qldbstream.simulate")
print("\\n".join(sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in bad))))
"""


@pytest.mark.parametrize("path", CORE, ids=_rel)
def test_importing_a_core_module_loads_no_aws_sdk_no_api_and_no_outer_room(path: Path) -> None:
    module = _dotted(path)
    run = subprocess.run(
        [sys.executable, "-c", _FRESH, module],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, f"import {module} failed:\n{run.stderr}"
    loaded = run.stdout.split()
    assert not loaded, f"import {module} (in a fresh interpreter) loads: {', '.join(loaded)}"


# --- the checks themselves ------------------------------------------------------------------------


def test_the_checks_name_the_module_line_and_import(tmp_path: Path) -> None:
    room = tmp_path / "qldbstream" / "core"
    room.mkdir(parents=True)
    bad = room / "probe.py"
    bad.write_text(
        "import time\n"
        "from . import decode\n"
        "from ..io import files\n"
        "def f():\n"
        "    import boto3\n"
        "    from datetime import datetime\n"
        "    return time.monotonic(), datetime.now(), open('x')\n",
        encoding="utf-8",
    )
    assert core_import_offences(bad, tmp_path) == [
        "qldbstream/core/probe.py:1: imports time",
        "qldbstream/core/probe.py:3: imports qldbstream.io",
        "qldbstream/core/probe.py:3: imports qldbstream.io.files",
        "qldbstream/core/probe.py:5: imports boto3",
    ]
    assert core_call_offences(bad, tmp_path) == [
        "qldbstream/core/probe.py:7: reads the clock: time.monotonic()",
        "qldbstream/core/probe.py:7: reads the clock: datetime.now()",
        "qldbstream/core/probe.py:7: calls open()",
    ]
    assert pipeline_offences(bad, tmp_path) == [
        "qldbstream/core/probe.py:3: imports qldbstream.io",
        "qldbstream/core/probe.py:3: imports qldbstream.io.files",
        "qldbstream/core/probe.py:5: imports boto3",
    ]
