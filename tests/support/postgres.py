"""A throwaway PostgreSQL server on 127.0.0.1 for the PostgreSQL migration tests.

``initdb`` into a temporary directory (trust authentication, superuser ``postgres``), then
``postgres -D DIR -h 127.0.0.1 -p PORT -k SOCKETDIR`` with durability off (a test server). The
binaries come from ``$PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (the newest). As
root, both run as the ``postgres`` OS user (``initdb`` refuses root), in a directory chowned to it.

Stopped by PID: SIGINT (PostgreSQL's *fast* shutdown: SIGTERM would wait for every client session
to end), then SIGKILL after a grace period; an ``atexit`` hook kills a server a crashed session
left running. The directory is removed afterwards. Output goes to a log file, printed when
start-up fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_binaries", "start_postgres"]

START_TIMEOUT = 60.0
STOP_GRACE = 10.0
OS_USER = "postgres"

_running: set[PostgresServer] = set()


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (the fixture skips, or fails under CI)."""


def find_binaries() -> Path:
    """The directory holding ``initdb`` and ``postgres``."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres", path=str(Path(found).parent)):
        return Path(found).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for initdb in reversed(candidates):
        if (initdb.parent / "postgres").exists():
            return initdb.parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres): install Debian's postgresql package "
        "(.ci/run does) or put them on PATH"
    )


@dataclass(eq=False)
class PostgresServer:
    process: subprocess.Popen[bytes]
    root: Path
    port: int
    log_path: Path
    _log: Any = field(repr=False)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def stop(self) -> None:
        """Fast shutdown by PID, SIGKILL if it lingers; then remove the data directory."""
        _running.discard(self)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_GRACE)
        self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_user() -> dict[str, Any]:
    """Popen arguments: as root, run as the ``postgres`` OS user."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {OS_USER!r} OS user to run initdb as"
        ) from None
    return {"user": OS_USER, "group": OS_USER, "extra_groups": []}


def start_postgres() -> PostgresServer:
    """initdb, start, wait until it accepts connections; raise with the log's tail if it does not."""
    import psycopg

    bindir = find_binaries()
    as_user = _as_user()
    root = Path(tempfile.mkdtemp(prefix="qldbstream-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if as_user:
        uid = pwd.getpwnam(OS_USER).pw_uid
        gid = pwd.getpwnam(OS_USER).pw_gid
        for path in (root, sockets):
            os.chown(path, uid, gid)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    log_path = root / "postgres.log"
    log = log_path.open("ab")
    if as_user:
        os.chown(log_path, pwd.getpwnam(OS_USER).pw_uid, pwd.getpwnam(OS_USER).pw_gid)
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            timeout=120,
            **as_user,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log.close()
        tail = log_path.read_text(errors="replace")[-2000:]
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({exc}):\n{tail}") from None
    port = free_port()
    process = subprocess.Popen(
        [
            str(bindir / "postgres"),
            *("-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets)),
            *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,
        **as_user,
    )
    server = PostgresServer(process, root, port, log_path, log)
    _running.add(server)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"postgres exited with {process.returncode}:\n{tail}")
        try:
            with psycopg.connect(server.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(
                    f"postgres did not accept connections in {START_TIMEOUT}s:\n{tail}"
                ) from None
            time.sleep(0.2)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()
