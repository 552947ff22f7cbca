"""Start and stop the local AWS stand-ins the integration tests talk to, on 127.0.0.1 only.

* kinesis-local (npm ``kinesis-local``, the Scala.js build of kinesis-mock) for Kinesis: it hard-codes
  ``0.0.0.0``, so it runs under the ``loopback-only.js`` preload. Readiness is ``GET /healthcheck`` on the
  plain port; the TLS port is never probed (a bare TCP connect to it makes the process ignore SIGTERM).
* moto server for Kinesis (the demo's default) and DynamoDB/SQS/S3/CloudWatch.

Every process is started here and stopped here, by PID: SIGTERM, then SIGKILL after a grace period. A
process that is still running when the interpreter exits (a crashed session) is killed by an ``atexit`` hook.
Output goes to a log file whose path is printed when start-up fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

__all__ = [
    "REPO_ROOT",
    "LocalServer",
    "MotoServer",
    "ServerStartError",
    "free_port",
    "start_kinesis_local",
    "start_moto_server",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
KINESIS_LOCAL_DIR = REPO_ROOT / "node_modules" / "kinesis-local"
LOOPBACK_PRELOAD = Path(__file__).with_name("loopback-only.js")

#: Seconds to wait for a server to answer HTTP after it was spawned.
START_TIMEOUT = 30.0
#: Seconds between SIGTERM and SIGKILL.
STOP_GRACE = 3.0

_running: set[LocalServer] = set()
S = TypeVar("S", bound="LocalServer")


class ServerStartError(RuntimeError):
    """A local server did not come up; the message names its log file."""


@dataclass(eq=False)
class LocalServer:
    """One local server process, reachable at ``endpoint`` (``http://127.0.0.1:PORT``)."""

    name: str
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, wait up to :data:`STOP_GRACE` seconds, then SIGKILL. Idempotent."""
        _running.discard(self)
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE)
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(eq=False)
class MotoServer(LocalServer):
    """moto server; :meth:`reset` drops every resource of every service."""

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_kinesis_local(log_dir: Path) -> LocalServer:
    """Start kinesis-local on two free loopback ports; return once ``/healthcheck`` answers 200.

    Raises :class:`ServerStartError` (never skips) when ``node_modules/kinesis-local`` is missing or the
    server does not come up; CI must run these tests.
    """
    main_js = KINESIS_LOCAL_DIR / "main.js"
    if not main_js.is_file():
        raise ServerStartError(
            f"{main_js} is missing: run `make node` (or `npm ci`) in {REPO_ROOT} to install kinesis-local"
        )
    plain, tls = free_port(), free_port()
    while tls == plain:
        tls = free_port()
    env = {
        **os.environ,
        "KINESIS_MOCK_CERT_PATH": str(KINESIS_LOCAL_DIR / "server.json"),
        "KINESIS_MOCK_PLAIN_PORT": str(plain),
        "KINESIS_MOCK_TLS_PORT": str(tls),
        "LOG_LEVEL": "WARN",
    }
    command = ["node", "-r", str(LOOPBACK_PRELOAD), str(main_js)]
    return _start("kinesis-local", command, env, plain, "/healthcheck", log_dir, LocalServer)


def start_moto_server(log_dir: Path) -> MotoServer:
    """Start ``moto_server -H 127.0.0.1`` from this interpreter's venv on a free port."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        raise ServerStartError(f"{moto} is missing: install the dev extras (`make venv`)")
    port = free_port()
    command = [str(moto), "-H", "127.0.0.1", "-p", str(port)]
    return _start("moto-server", command, dict(os.environ), port, "/moto-api/", log_dir, MotoServer)


def _start(
    name: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    ready_path: str,
    log_dir: Path,
    kind: type[S],
) -> S:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then stops us in order
    )
    server = kind(name, f"http://127.0.0.1:{port}", process, log_path, log)
    _running.add(server)
    try:
        _wait_until_ready(server, ready_path)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: LocalServer, path: str) -> None:
    """Poll ``GET endpoint+path`` until it answers (200 for kinesis-local's health check)."""
    url = server.endpoint + path
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(
                f"{server.name} exited with code {code} during start-up; log: {server.log_path}\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise ServerStartError(
        f"{server.name} did not answer {url} within {START_TIMEOUT:.0f} s ({last_error}); "
        f"log: {server.log_path}\n{server.log_tail()}"
    )


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()
