"""``qldbstream local``: a local AWS on 127.0.0.1 for the ``--stream`` / ``--endpoint-url`` examples.

It starts one server in the foreground and stops it, by its PID, on Ctrl-C or SIGTERM:

* ``--engine moto`` (the default): moto server - Kinesis, DynamoDB, SQS, S3 and CloudWatch behind one
  endpoint, which is what ``qldbstream run`` needs (the stream, its checkpoint table, a DLQ queue).
  moto comes with ``qldbstream-tools`` (``pip install -e ./tools`` in a checkout).
* ``--engine kinesis-local``: the npm package ``kinesis-local`` (kinesis-mock), Kinesis only, closer to
  Kinesis' own behaviour (shards, iterators, limits). It listens on ``0.0.0.0`` by itself, so it runs
  under a preload that keeps every listening socket on 127.0.0.1.

Once the server answers, the environment lines to use are printed on standard output and a status
line on standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from qldbstream.core.errors import ConfigurationError, QldbStreamError

__all__ = ["DEFAULT_PORT", "register", "run"]

#: The port the README's ``--endpoint-url http://127.0.0.1:4568`` examples use.
DEFAULT_PORT = 4568
#: Seconds to wait for the server to answer after it was started.
START_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping it.
STOP_GRACE = 5.0
#: Credentials and region for a local endpoint: any values will do, these are the usual ones.
LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: kinesis-local hard-codes 0.0.0.0: every ``net.Server.listen()`` is moved onto 127.0.0.1 first
#: (the same preload as ``tests/support/loopback-only.js``), then its main.js runs.
_LOOPBACK_THEN_MAIN = r"""
'use strict';
const net = require('net');
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length && typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] === 'string') args[1] = '127.0.0.1'; else args.splice(1, 0, '127.0.0.1');
  }
  return orig.apply(this, args);
};
require(process.argv[1]);
"""

EXAMPLES = f"""\
examples:
  qldbstream local                          # moto on http://127.0.0.1:{DEFAULT_PORT}; Ctrl-C stops it
  qldbstream local --port 0                 # a free port (printed)
  qldbstream local --engine kinesis-local   # Kinesis only, from the npm package kinesis-local

then, in another shell (the lines it prints):
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  qldbstream simulate --stream my-stream --endpoint-url http://127.0.0.1:{DEFAULT_PORT} --create-stream
  qldbstream verify --stream my-stream --endpoint-url http://127.0.0.1:{DEFAULT_PORT}

kinesis-local is found in --kinesis-local DIR, else $QLDBSTREAM_KINESIS_LOCAL, else in
./node_modules/kinesis-local or the qldbstream checkout's; install it with 'npm install kinesis-local'
(in a checkout: make node).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "local",
        help="start a local AWS (moto, or kinesis-local) on 127.0.0.1 for the --endpoint-url examples",
        description="Start a local Kinesis (and, with moto, DynamoDB, SQS, S3) on 127.0.0.1 in the "
        "foreground, print the environment to use, and stop it on Ctrl-C or SIGTERM.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engine",
        choices=("moto", "kinesis-local"),
        default="moto",
        help="moto server (Kinesis, DynamoDB, SQS, S3; default) or kinesis-local (Kinesis only)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"the port on 127.0.0.1 (default {DEFAULT_PORT}; 0: a free one)",
    )
    p.add_argument(
        "--kinesis-local", metavar="DIR", help="the kinesis-local package directory (with main.js)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    port = _port(args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with _log_file() as log, _server(args, port, log) as server:
            endpoint = f"http://127.0.0.1:{port}"
            for name, value in LOCAL_ENV.items():
                sys.stdout.write(f"export {name}={value}\n")
            sys.stdout.write(f"export QLDBSTREAM_ENDPOINT_URL={endpoint}\n")
            sys.stdout.flush()
            what = "Kinesis, DynamoDB, SQS, S3, CloudWatch" if args.engine == "moto" else "Kinesis"
            _say(
                f"{args.engine} ({what}) at {endpoint}, pid {server.pid}; in another shell run the lines "
                f"above, or give --endpoint-url {endpoint}; Ctrl-C stops it"
            )
            try:
                while not stop.wait(0.5):
                    code = server.poll()
                    if code is not None:
                        raise QldbStreamError(
                            f"{args.engine} exited by itself with code {code}: {_tail(log)}"
                        )
            except KeyboardInterrupt:
                pass
            _say(f"stopping {args.engine} (pid {server.pid})")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _say(text: str) -> None:
    sys.stderr.write(f"qldbstream local: {text}\n")
    sys.stderr.flush()


def _port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1 (0: one the kernel picks), else one line saying what to do."""
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"--port {port}: not a port number")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigurationError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}): is a local server running already? "
                "Stop it, or give --port 0 for a free port"
            ) from None
        return int(sock.getsockname()[1])


def _command(args: argparse.Namespace, port: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if args.engine == "moto":
        moto = Path(sys.executable).with_name("moto_server")
        found = str(moto) if moto.exists() else shutil.which("moto_server")
        if found is None:
            raise ConfigurationError(
                "moto server is not installed: pip install 'moto[server]' (it comes with qldbstream-tools: "
                "pip install -e ./tools in a checkout), or use --engine kinesis-local"
            )
        return [found, "-H", "127.0.0.1", "-p", str(port)], env
    package = _kinesis_local(args.kinesis_local)
    node = shutil.which("node")
    if node is None:
        raise ConfigurationError(
            "kinesis-local runs on Node.js, and 'node' is not on PATH: install Node.js 18+"
        )
    tls = _port(0)
    while tls == port:
        tls = _port(0)
    env.update(
        KINESIS_MOCK_CERT_PATH=str(package / "server.json"),
        KINESIS_MOCK_PLAIN_PORT=str(port),
        KINESIS_MOCK_TLS_PORT=str(tls),
        LOG_LEVEL="WARN",
    )
    return [node, "-e", _LOOPBACK_THEN_MAIN, str(package / "main.js")], env


def _kinesis_local(given: str | None) -> Path:
    """The kinesis-local package directory: the flag, the environment, ./node_modules, the checkout's."""
    candidates = [Path(given)] if given else []
    if not given and os.environ.get("QLDBSTREAM_KINESIS_LOCAL"):
        candidates.append(Path(os.environ["QLDBSTREAM_KINESIS_LOCAL"]))
    if not given:
        candidates.append(Path.cwd() / "node_modules" / "kinesis-local")
        candidates.append(Path(__file__).resolve().parents[2] / "node_modules" / "kinesis-local")
    for candidate in candidates:
        if (candidate / "main.js").is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigurationError(
        f"kinesis-local is not installed (no main.js in {looked}): npm install kinesis-local (in a "
        "qldbstream checkout: make node), or use the default --engine moto"
    )


@contextlib.contextmanager
def _log_file() -> Iterator[IO[bytes]]:
    """The server's output, in a temporary file removed afterwards (its tail is shown when it fails)."""
    with tempfile.TemporaryFile(prefix="qldbstream-local-") as log:
        yield log


@contextlib.contextmanager
def _server(args: argparse.Namespace, port: int, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    command, env = _command(args, port)
    process = subprocess.Popen(  # noqa: S603 - our own command line: moto_server or node + kinesis-local
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C reaches this command, which then stops the server by its PID
    )
    try:
        _wait_until_ready(process, f"http://127.0.0.1:{port}", args.engine, log)
        yield process
    finally:
        _stop(process)


def _wait_until_ready(process: subprocess.Popen[bytes], endpoint: str, engine: str, log: IO[bytes]) -> None:
    url = endpoint + ("/moto-api/" if engine == "moto" else "/healthcheck")
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise QldbStreamError(f"{engine} exited with code {code} while starting: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http://127.0.0.1 only
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise QldbStreamError(
        f"{engine} did not answer {url} within {START_TIMEOUT:.0f} s ({last}): {_tail(log)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's PID, then SIGKILL after :data:`STOP_GRACE` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE)


def _tail(log: IO[bytes], lines: int = 5) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(text) or "it printed nothing"
