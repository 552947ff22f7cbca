"""What a deployed consumer carries: the wheels deploy/lambda/build-zip.sh (and the image) install.

The core wheel and the handlers wheel are built from a copy of the tree, as build-zip.sh builds them,
and read back: neither holds the ledger simulator, the demo or its embedded local AWS (moto), nor
requires moto - those are the qldbstream-tools distribution's (``tools/``), which no Lambda zip installs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.slow

#: what no deployed wheel may contain (path fragments)
DEV_ONLY = ("qldbstream/simulate/", "qldbstream/demo/", "localaws", "qldbstream_tools/", "moto")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """The qldbstream and qldbstream-handlers wheels, built with pip from a clean copy."""
    base = tmp_path_factory.mktemp("wheels")
    src, out = base / "src", base / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(REPO_ROOT / "qldbstream", src / "qldbstream", ignore=ignore)
    shutil.copytree(REPO_ROOT / "handlers", src / "handlers", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out),
            str(src),
            str(src / "handlers"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        name: zipfile.ZipFile(next(out.glob(f"{name}-*.whl")))
        for name in ("qldbstream", "qldbstream_handlers")
    }


def metadata(wheel: zipfile.ZipFile, member: str) -> str:
    name = next(n for n in wheel.namelist() if n.endswith(f".dist-info/{member}"))
    return wheel.read(name).decode()


def unconditional_requirements(wheel: zipfile.ZipFile) -> list[str]:
    return [
        line.removeprefix("Requires-Dist: ")
        for line in metadata(wheel, "METADATA").splitlines()
        if line.startswith("Requires-Dist: ") and "extra ==" not in line
    ]


@pytest.mark.parametrize("name", ["qldbstream", "qldbstream_handlers"])
def test_no_simulator_demo_or_moto_in_a_deployed_wheel(wheels: dict[str, zipfile.ZipFile], name: str) -> None:
    files = wheels[name].namelist()
    assert any(f.endswith(".py") for f in files), files
    found = [f for f in files if any(part in f for part in DEV_ONLY)]
    assert not found, f"{name} ships development-only code: {found}"
    requires = unconditional_requirements(wheels[name])
    assert not [r for r in requires if r.startswith(("moto", "flask", "qldbstream-tools"))], requires


def test_the_core_cli_holds_only_its_own_commands(wheels: dict[str, zipfile.ZipFile]) -> None:
    """demo/simulate come with qldbstream-tools, export with qldbstream-handlers (entry points)."""
    cli = {
        f.removeprefix("qldbstream/cli/")
        for f in wheels["qldbstream"].namelist()
        if f.startswith("qldbstream/cli/")
    }
    assert not cli & {"demo.py", "simulate.py", "export.py"}, cli
    assert "qldbstream.commands" not in metadata(wheels["qldbstream"], "entry_points.txt")
    handlers = metadata(wheels["qldbstream_handlers"], "entry_points.txt")
    assert "[qldbstream.commands]\nexport = qldbstream_handlers.export.command" in handlers, handlers
    assert "qldbstream_handlers/export/command.py" in wheels["qldbstream_handlers"].namelist()
