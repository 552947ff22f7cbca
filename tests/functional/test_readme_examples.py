"""Every shell example in README.md runs as written.

The fenced ``sh`` blocks run in order, as one shell session a reader would type them into, in an empty
directory, with no AWS configuration but what the README itself exports. A block is skipped only when
the line before it is a marker comment:

* ``<!-- example: illustrative (...) -->`` - it needs what a test cannot have (your own files, AWS, minutes);
* ``<!-- example: starts the local AWS (...) -->`` - ``qldbstream local``: this test starts it itself,
  on a free port, and the examples' ``127.0.0.1:4568`` is pointed at that port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import REPO_ROOT, free_port

README = REPO_ROOT / "README.md"
MARKER = re.compile(r"<!-- example: (illustrative|starts the local AWS)\b.*-->")
README_ENDPOINT = "127.0.0.1:4568"
#: The whole session's bound (the brief: well under a minute on a quiet machine).
TIMEOUT = 90


def blocks(text: str) -> list[tuple[str | None, str]]:
    """``(marker kind or None, body)`` for each fenced ``sh`` block, in order."""
    found = []
    for match in re.finditer(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip("\n").splitlines()
        marker = MARKER.fullmatch(before[-1].strip()) if before else None
        found.append((marker.group(1) if marker else None, match.group(1)))
    return found


def test_the_readme_marks_what_it_does_not_run() -> None:
    found = blocks(README.read_text(encoding="utf-8"))
    kinds = [kind for kind, _ in found]
    assert kinds.count(None) >= 4, "the README should have runnable examples"
    local = [body for kind, body in found if kind == "starts the local AWS"]
    assert len(local) == 1 and local[0].split("#")[0].strip() == "qldbstream local"


def test_the_router_example_does_not_clash_with_the_handlers_example() -> None:
    """Its ``QLDBSTREAM_HANDLERS`` example loads the built-in plugins it names next to the router: a
    router with the name of one of them would be two handlers with one name."""
    text = README.read_text(encoding="utf-8")
    routers = set(re.findall(r'Router\("([^"]+)"\)', text))
    plugins = {
        name
        for value in re.findall(r"QLDBSTREAM_HANDLERS=([\w.:,-]+)", text)
        for name in value.split(",")
        if ":" not in name
    }
    assert routers and plugins and not routers & plugins


@pytest.mark.integration
def test_every_shell_example_in_the_readme_runs(tmp_path: Path) -> None:
    port = free_port()
    script = ["set -e -x"]
    for kind, body in blocks(README.read_text(encoding="utf-8")):
        if kind is None:
            script.append(body.replace(README_ENDPOINT, f"127.0.0.1:{port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLDBSTREAM_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    work = tmp_path / "work"
    work.mkdir()
    local = subprocess.Popen(
        [sys.executable, "-m", "qldbstream", "local", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert local.stdout is not None and local.stderr is not None
    started = time.monotonic()
    try:
        for line in local.stdout:  # the export lines; the endpoint's comes last, once it answers
            if line.startswith("export QLDBSTREAM_ENDPOINT_URL="):
                break
        else:
            pytest.fail(f"qldbstream local did not start: {local.stderr.read()}")
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"a README example failed:\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr
        assert (work / "audit.jsonl").stat().st_size > 0  # the worker example ran its handler
    finally:
        local.send_signal(signal.SIGTERM)
        try:
            local.wait(timeout=15)
        except subprocess.TimeoutExpired:
            local.kill()
            local.wait()
    assert time.monotonic() - started < TIMEOUT
