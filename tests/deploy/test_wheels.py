"""What a deployed consumer carries: the wheels deploy/lambda/build-zip.sh (and the image) install.

The core wheel and the handlers wheel are built from a copy of the tree, as build-zip.sh builds them,
and read back: neither holds the ledger simulator, the demo or its embedded local AWS (moto), nor
requires moto - those are the qldbstream-tools distribution's (``tools/``), which no Lambda zip installs.
The core wheel requires neither rich nor prometheus-client (extras ``cli``, ``prometheus``) and carries
the licence. ``native/build-wheels.sh`` builds the compiled hot path as a manylinux2014 abi3 wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
    for name in ("pyproject.toml", "README.md", "LICENSE"):
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


def test_the_core_wheel_carries_the_license_and_no_cli_or_metrics_dependency(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    """rich and prometheus-client are extras (``cli``, ``prometheus``); the compiled path is ``native``."""
    meta = metadata(wheels["qldbstream"], "METADATA")
    assert "License-Expression: Apache-2.0" in meta, meta[:600]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheels["qldbstream"].namelist())
    names = [
        r.split(">")[0].split("=")[0].split("<")[0] for r in unconditional_requirements(wheels["qldbstream"])
    ]
    assert sorted(names) == ["amazon-ion", "boto3"], names
    extras = [line for line in meta.splitlines() if line.startswith("Requires-Dist: ") and "extra ==" in line]
    for requirement, extra in (
        ("rich", "cli"),
        ("prometheus-client", "prometheus"),
        ("qldbstream-native", "native"),
    ):
        assert any(
            line.startswith(f"Requires-Dist: {requirement}") and f'extra == "{extra}"' in line
            for line in extras
        ), (
            requirement,
            extras,
        )


#: ``e_machine`` of an ELF header (offset 18, little-endian) per wheel architecture
ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


def test_build_wheels_makes_a_manylinux2014_abi3_native_wheel(tmp_path: Path) -> None:
    """native/build-wheels.sh (``make wheels``): one wheel for any glibc >= 2.17 and CPython >= 3.11.

    Builds x86_64 only (about 2 min cold on 2 cores, seconds when CARGO_TARGET_DIR is warm); the first run
    installs maturin and ziglang from PyPI into the tool venv.
    """
    if shutil.which("cargo") is None:
        pytest.skip("no Rust toolchain (cargo): native/build-wheels.sh cannot build here")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "native" / "build-wheels.sh")],
        env={**os.environ, "ARCHS": "x86_64", "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = tmp_path.glob("qldbstream_native-*.whl")
    wheel = zipfile.ZipFile(path)
    tags = [
        line.removeprefix("Tag: ")
        for line in metadata(wheel, "WHEEL").splitlines()
        if line.startswith("Tag: ")
    ]
    assert "cp311-abi3-manylinux2014_x86_64" in tags, tags
    [so] = [n for n in wheel.namelist() if n.endswith(".so")]
    assert so.endswith(".abi3.so"), so
    binary = wheel.read(so)
    assert binary[:4] == b"\x7fELF" and int.from_bytes(binary[18:20], "little") == ELF_MACHINE["x86_64"]
    glibc = {
        tuple(int(p) for p in v.split(b".")) for v in re.findall(rb"GLIBC_(2\.[0-9]+(?:\.[0-9]+)?)", binary)
    }
    assert glibc and max(glibc) <= (2, 17), sorted(glibc)
