"""The ``qldbstream`` command at its edges, as a new user meets them: AWS set-up errors, closed pipes,
``--debug``, standard input, the environment's region, progress on a terminal, ``qldbstream local``.

What is about the process (exit status, stderr, a pipe closed by its reader) runs ``qldbstream`` as a
subprocess; every subprocess has a timeout.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from qldbstream.cli import command
from qldbstream.cli.local import LOCAL_ENV
from tests.support.servers import free_port

QLDBSTREAM = [sys.executable, "-m", "qldbstream"]
TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AWS configuration (no region, no credentials, no profile files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLDBSTREAM_"))}
    env.update(
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def cli(
    *argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QLDBSTREAM, *argv],
        env=env if env is not None else clean_env(),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def one_line(stderr: str, command_name: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"qldbstream {command_name}:")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-edges") / "events.jsonl"
    done = cli("simulate", "--transactions", "300", "-o", str(path))
    assert done.returncode == 0, done.stderr
    return path


# --- AWS set-up errors: one line, the documented status, --debug adds the traceback only -----------

UNREACHABLE = f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (
            [
                "verify",
                "--stream",
                "my-stream",
                "--endpoint-url",
                UNREACHABLE,
                "--from",
                "2024-01-01T00:00:00Z",
            ],
            "verify",
        ),
        (
            [
                "run",
                "--stream",
                "my-stream",
                "--endpoint-url",
                UNREACHABLE,
                "--until-caught-up",
                "--no-progress",
            ],
            "run",
        ),
        (
            ["simulate", "--transactions", "5", "--stream", "my-stream", "--endpoint-url", UNREACHABLE],
            "simulate",
        ),
    ],
)
def test_aws_set_up_errors_are_one_line_with_the_documented_status(argv: list[str], name: str) -> None:
    if name == "simulate":  # the simulated stream's region (eu-west-1) unless the environment gives one
        assert "AWS_REGION" in cli("simulate", "--help").stdout
    else:
        no_region = cli(*argv)
        assert no_region.returncode == 2
        assert "no AWS region: give --region or set AWS_REGION" in one_line(no_region.stderr, name)

    no_credentials = cli(*argv, env=clean_env(AWS_DEFAULT_REGION="us-east-1"))
    assert no_credentials.returncode == 2
    assert "no AWS credentials" in one_line(no_credentials.stderr, name)

    unreachable = cli(*argv, env=clean_env(**LOCAL_ENV))
    assert unreachable.returncode == 1
    line = one_line(unreachable.stderr, name)
    assert f"cannot reach {UNREACHABLE}" in line and "qldbstream local" in line

    if name == "verify":  # the traceback, then the same line and the same status
        debug = cli("--debug", *argv)
        assert debug.returncode == 2
        assert "Traceback" in debug.stderr and "NoRegionError" in debug.stderr
        assert debug.stderr.rstrip().splitlines()[-1].startswith(f"qldbstream {name}: no AWS region")


def test_debug_never_changes_the_exit_status(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jsonl")
    plain, debug = cli("verify", missing), cli("--debug", "verify", missing)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr


def test_throttling_after_retries_and_a_missing_stream_are_one_line() -> None:
    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, "PutRecords")

    status, line = command._failure(client_error("ProvisionedThroughputExceededException"))
    assert status == command.EXIT_FAILED
    assert line.startswith("PutRecords: ProvisionedThroughputExceededException after botocore's retries")
    status, line = command._failure(client_error("ResourceNotFoundException"))
    assert status == command.EXIT_INPUT and "check the name and region" in line
    # a command that already said what its AWS call was for keeps its own line and status
    from qldbstream.core.errors import QldbStreamError

    try:
        try:
            raise client_error("AccessDeniedException")
        except ClientError as exc:
            raise QldbStreamError("writing the checkpoint failed") from exc
    except QldbStreamError as wrapped:
        assert command._failure(wrapped) == (command.EXIT_FAILED, "writing the checkpoint failed")


def test_an_unexpected_error_is_one_line_and_debug_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qldbstream.cli import config

    def boom(args: Namespace) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(config, "run", boom)
    assert command.main(["config"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "qldbstream config: unexpected error: ZeroDivisionError: division by zero" in err
    assert command.main(["--debug", "config"]) == 1
    assert "Traceback" in capsys.readouterr().err


# --- a closed pipe is a quiet exit ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--transactions", "300", "-o", "-"],
        ["verify", "--json", "{events}"],
        ["inspect", "{events}"],
    ],
)
def test_a_closed_pipe_is_a_quiet_exit(argv: list[str], events: Path) -> None:
    """``... | head``: the reader goes away before the command has written everything."""
    proc = subprocess.Popen(
        [*QLDBSTREAM, *(a.format(events=events) for a in argv)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # what head does once it has its lines
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert code == command.EXIT_PIPE


# --- inputs, settings, the simulator ----------------------------------------------------------------


def test_inspect_and_verify_read_standard_input(events: Path) -> None:
    data = events.read_bytes()
    inspected = cli("inspect", "--index", "0", "-", stdin=data)
    assert inspected.returncode == 0, inspected.stderr
    assert inspected.stdout.startswith("## Kinesis record") and "verified" in inspected.stdout
    verified = cli("verify", "--json", "--no-progress", "-", stdin=data)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


def test_config_refuses_an_unknown_handler() -> None:
    unknown = cli("config", env=clean_env(QLDBSTREAM_HANDLERS="audit,no-such-handler"))
    assert unknown.returncode == 2
    assert "unknown handler plugin 'no-such-handler' (installed: " in one_line(unknown.stderr, "config")
    no_module = cli("config", env=clean_env(QLDBSTREAM_HANDLERS="no_such_module:router"))
    assert no_module.returncode == 2
    assert "cannot import no_such_module" in one_line(no_module.stderr, "config")
    known = cli("config", env=clean_env(QLDBSTREAM_HANDLERS="audit"))
    assert known.returncode == 0, known.stderr


def test_a_bad_late_policy_lists_the_valid_values() -> None:
    bad = cli("config", env=clean_env(QLDBSTREAM_LATE_POLICY="sometimes"))
    assert bad.returncode == 2
    assert "one of: drop, deliver-late, reorder" in one_line(bad.stderr, "config")


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_simulate_takes_the_region_from_the_environment(variable: str) -> None:
    done = cli("simulate", "--transactions", "3", "-o", "-", env=clean_env(**{variable: "ap-south-1"}))
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout.splitlines()[0])
    assert {r["awsRegion"] for r in event["Records"]} == {"ap-south-1"}
    flag = cli(
        "simulate", "--transactions", "3", "--region", "eu-north-1", "-o", "-", env=clean_env(AWS_REGION="x")
    )
    assert json.loads(flag.stdout.splitlines()[0])["Records"][0]["awsRegion"] == "eu-north-1"
    default = cli("simulate", "--transactions", "3", "-o", "-")
    assert json.loads(default.stdout.splitlines()[0])["Records"][0]["awsRegion"] == "eu-west-1"


def test_simulate_shows_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path: Path) -> None:
    argv = [*QLDBSTREAM, "simulate", "--transactions", "800", "-o", str(tmp_path / "e.jsonl")]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(argv, env=clean_env(), stderr=follower, timeout=TIMEOUT, check=False)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "qldbstream simulate: simulating 800 transactions ... " in shown
    piped = cli("simulate", "--transactions", "800", "-o", str(tmp_path / "f.jsonl"))
    assert piped.returncode == 0 and "simulating 800" not in piped.stderr
    assert piped.stderr.startswith("simulated ")


def test_demo_without_output_leaves_no_directory_when_every_check_passed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's part: the runner's temporary directory is removed after a passing run, kept after a
    failing one (the run itself is tests/functional/test_demo.py's)."""
    from qldbstream_tools.cli import demo
    from qldbstream_tools.demo.checks import Check
    from qldbstream_tools.demo.runner import DemoResult

    made: list[Path] = []

    def run_demo(options: Any, progress: Any) -> DemoResult:
        assert options.output is None
        out = tmp_path / f"qldbstream-demo-{len(made)}"
        out.mkdir()
        (out / "report.json").write_text("{}")
        made.append(out)
        return DemoResult({"output": str(out)}, [Check("planted", ok, "")], out)

    monkeypatch.setattr(demo, "run_demo", run_demo)
    ok = True
    assert command.main(["demo", "--json", "--no-progress"]) == 0
    assert not made[-1].exists()
    ok = False
    assert command.main(["demo", "--json", "--no-progress"]) == 1
    assert made[-1].is_dir()
    capsys.readouterr()


# --- qldbstream local -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["moto", "kinesis-local"])
def test_local_starts_answers_list_streams_and_stops_on_sigterm(engine: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*QLDBSTREAM, "local", "--engine", engine, "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + TIMEOUT
        while "QLDBSTREAM_ENDPOINT_URL" not in exports and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"qldbstream local ended before it was ready: {proc.stderr.read()}"
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
        endpoint = exports["QLDBSTREAM_ENDPOINT_URL"]
        assert endpoint == f"http://127.0.0.1:{port}"
        assert {k: exports[k] for k in LOCAL_ENV} == LOCAL_ENV
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=endpoint,
            region_name=exports["AWS_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        assert kinesis.list_streams()["StreamNames"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        err = proc.stderr.read()
        assert f"stopping {engine}" in err and "Traceback" not in err
        with pytest.raises(Exception):  # noqa: B017 - any connection error: the server is gone
            boto3.client(
                "kinesis",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="t",
                aws_secret_access_key="t",
                config=__import__("botocore.config").config.Config(retries={"max_attempts": 1}),
            ).list_streams()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_local_says_how_to_get_kinesis_local_and_refuses_a_taken_port(tmp_path: Path) -> None:
    missing = cli("local", "--engine", "kinesis-local", "--port", "0", "--kinesis-local", str(tmp_path))
    assert missing.returncode == 2
    assert "npm install kinesis-local" in one_line(missing.stderr, "local")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("local", "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2
    assert "give --port 0 for a free port" in one_line(busy.stderr, "local")
