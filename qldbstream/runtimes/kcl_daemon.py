"""The KCL MultiLangDaemon for qldbstream: its ``.properties`` from the settings, and a launcher.

:func:`kcl_properties` maps the qldbstream configuration onto the daemon's properties (stream,
application = lease table name, region, endpoints, initial position, batch size) and adds what the
record processor (:mod:`qldbstream.runtimes.kcl`) relies on: ``callProcessRecordsEvenForEmptyRecordList``
(so a halted shard is retried while it is idle), ``retrievalMode = POLLING`` and a
``shutdownGraceMillis`` that lets processors checkpoint on SIGTERM. Every property can be overridden.

:func:`run_daemon` starts ``java -cp <jars>/* software.amazon.kinesis.multilang.MultiLangDaemon
--properties-file <file>`` in this process group, forwards SIGTERM/SIGINT to it (a second signal
kills it), reaps orphans when running as PID 1 (a container), and returns its exit status (0 when
it stopped because we asked it to). The jars are amazon-kclpy's, installed by
``deploy/kcl/install.sh`` (``make kcl``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from qldbstream.app.config import Settings
from qldbstream.core.errors import ConfigurationError

__all__ = [
    "MAIN_CLASS",
    "METRICS_LEVELS",
    "DaemonOptions",
    "KclSetupError",
    "find_jar_dir",
    "find_java",
    "kcl_properties",
    "prometheus_endpoint",
    "render_properties",
    "run_daemon",
]

MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
METRICS_LEVELS = ("NONE", "SUMMARY", "DETAILED")
INSTALL_HINT = "run `make kcl` or `deploy/kcl/install.sh` (needs Java 17 and Maven)"
#: Seconds the daemon gets after the forwarded SIGTERM before it is killed.
STOP_TIMEOUT = 60.0


#: Properties the record processor depends on, and why.
_REQUIRED = {
    "callProcessRecordsEvenForEmptyRecordList": "a halted shard's records are retried on empty calls",
    "skipShardSyncAtWorkerInitializationIfLeasesExist": "otherwise the KCL drops QLDB's KPL aggregates "
    "whose user records hash to other shards (see docs/kcl.md)",
}


class KclSetupError(ConfigurationError):
    """Java or the daemon's jars are missing; the message says how to install them."""


@dataclass(frozen=True)
class DaemonOptions:
    """What the settings do not say about the daemon. ``overrides`` win over every rendered property."""

    worker_id: str | None = None
    metrics_level: str = "NONE"
    #: The record processor command (the daemon splits ``executableName`` on spaces).
    processor: tuple[str, ...] = (sys.executable, "-m", "qldbstream.kcl")
    overrides: Mapping[str, str] = field(default_factory=dict)


def default_worker_id() -> str:
    """``<host name>-<8 hex>``: unique per start, and the host shows in the lease table."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def kcl_properties(settings: Settings, options: DaemonOptions | None = None) -> dict[str, str]:
    """The daemon's properties for ``settings``; raises ConfigurationError for what it cannot run."""
    options = options or DaemonOptions()
    if not settings.stream_name:
        raise ConfigurationError("no stream to read: set stream_name (QLDBSTREAM_STREAM_NAME or --stream)")
    if not settings.region:
        raise ConfigurationError("no region: set region (QLDBSTREAM_REGION, AWS_REGION or --region)")
    if settings.end_time is not None:
        raise ConfigurationError(
            "end_time (a bounded export) is for 'qldbstream run'; the KCL worker reads continuously"
        )
    level = options.metrics_level.upper()
    if level not in METRICS_LEVELS:
        raise ConfigurationError(f"metrics level {options.metrics_level!r} is not one of {METRICS_LEVELS}")
    for part in options.processor:
        if not part or any(c.isspace() for c in part):
            raise ConfigurationError(f"the daemon splits executableName on spaces; cannot pass {part!r}")
    props: dict[str, str] = {
        "executableName": " ".join(options.processor),
        "streamName": settings.stream_name,
        # The application name is the lease table's name (and the prefix of the KCL's two other tables).
        "applicationName": settings.application_name,
        "workerId": options.worker_id or default_worker_id(),
        "regionName": settings.region,
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "metricsLevel": level,
        "retrievalMode": "POLLING",
        "maxRecords": str(min(settings.batch_max, 10_000)),
        "idleTimeBetweenReadsInMillis": "1000",
        # A halted shard's processor keeps its unfinished records and retries them on each call:
        # the calls must keep coming while the shard is idle.
        "callProcessRecordsEvenForEmptyRecordList": "true",
        # The KCL drops every KPL aggregate holding a user record whose partition key hashes outside the
        # shard's range - silently, checkpointing past it. QLDB's user records are keyed by their hashes,
        # so on a stream of several shards most aggregates would be lost. This flag makes the KCL's
        # ProcessTask deaggregate without the range check (its documented effect, skipping the start-up
        # shard sync when leases exist, is harmless). See docs/kcl.md, "KPL aggregates".
        "skipShardSyncAtWorkerInitializationIfLeasesExist": "true",
        "failoverTimeMillis": "10000",
        "shardSyncIntervalMillis": "60000",
        "parentShardPollIntervalMillis": "10000",
        # On SIGTERM processors get shutdownRequested and checkpoint (0 would skip it).
        "shutdownGraceMillis": "5000",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
    }
    if settings.start_position == "AT_TIMESTAMP":
        assert settings.start_time is not None  # load_settings checks it
        props["initialPositionInStreamExtended"] = str(int(settings.start_time.timestamp()))
    else:
        props["initialPositionInStream"] = settings.start_position
    for name, key in (("kinesis", "kinesisEndpoint"), ("dynamodb", "dynamoDBEndpoint")):
        endpoint = settings.endpoint(name)
        if endpoint:
            props[key] = endpoint
    for key, value in options.overrides.items():
        if not key or any(c in key for c in "=: \t\r\n") or any(c in value for c in "\r\n"):
            raise ConfigurationError(f"property {key!r} = {value!r}: keys are one word, values one line")
        props[key] = value
    for key, why in _REQUIRED.items():
        if props.get(key, "").lower() != "true":
            raise ConfigurationError(f"{key} must stay true: {why}")
    return props


def render_properties(props: Mapping[str, str]) -> str:
    """A Java ``.properties`` file (``key = value`` lines; backslashes escaped)."""
    header = (
        "# The KCL MultiLangDaemon's properties, rendered by `qldbstream kcl` from the qldbstream settings.\n"
    )
    lines = (f"{key} = {value.strip().replace(chr(92), chr(92) * 2)}\n" for key, value in props.items())
    return header + "".join(lines)


def find_java(java: str | None = None) -> str:
    """The ``java`` to run: ``java`` (a path or a name), else ``$JAVA_HOME/bin/java``, else the PATH's."""
    if java:
        found = shutil.which(java)
        if found:
            return found
        raise KclSetupError(f"no Java at {java!r}: install a JRE 17 (the KCL MultiLangDaemon is Java)")
    home = os.environ.get("JAVA_HOME")
    if home and shutil.which(str(Path(home) / "bin" / "java")):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found:
        return found
    raise KclSetupError(
        "no Java: `java` is not on the PATH; install a JRE 17 (the KCL MultiLangDaemon is Java)"
    )


def find_jar_dir(jar_dir: str | None = None) -> Path:
    """The daemon's jars: ``jar_dir``, else ``$KCL_JAR_DIR``, else amazon-kclpy's ``jars`` directory."""
    where = jar_dir or os.environ.get("KCL_JAR_DIR")
    if where:
        path = Path(where)
    else:
        spec = importlib.util.find_spec("amazon_kclpy")
        if spec is None or spec.origin is None:
            raise KclSetupError(f"amazon-kclpy is not installed: {INSTALL_HINT}")
        path = Path(spec.origin).parent / "jars"
    if not any(path.glob("amazon-kinesis-client-multilang-*.jar")):
        raise KclSetupError(f"no KCL MultiLangDaemon jars in {path}: {INSTALL_HINT}")
    return path.resolve()


@contextlib.contextmanager
def prometheus_endpoint(spec: str, env: dict[str, str]) -> Iterator[None]:
    """For ``metrics = prometheus:PORT``: the record processors (one process per shard) write their
    metrics to ``PROMETHEUS_MULTIPROC_DIR`` (set in ``env``, a fresh directory unless already set),
    and this serves their sum on ``http://127.0.0.1:PORT/metrics`` while the block runs."""
    if not spec.startswith("prometheus:"):
        yield
        return
    from qldbstream.extras import require

    require("prometheus_client", f"metrics = {spec}")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    try:
        port = int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigurationError(f"metrics: {spec!r} is not prometheus:<port>") from None
    with contextlib.ExitStack() as stack:
        directory = env.get("PROMETHEUS_MULTIPROC_DIR") or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="qldbstream-prometheus-")
        )
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        sys.stderr.write(f"qldbstream kcl: metrics of every shard on http://127.0.0.1:{port}/metrics\n")
        try:
            yield
        finally:
            server.shutdown()


def daemon_command(
    java: str, jar_dir: Path, properties_file: Path, jvm_options: Sequence[str] = ()
) -> list[str]:
    return [java, *jvm_options, "-cp", f"{jar_dir}/*", MAIN_CLASS, "--properties-file", str(properties_file)]


def run_daemon(
    props: Mapping[str, str],
    *,
    java: str | None = None,
    jar_dir: str | None = None,
    jvm_options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    properties_file: str | None = None,
) -> int:
    """Run the daemon until it exits; return its status (0 after a stop we asked for).

    The properties go to ``properties_file`` (kept) or to a temporary file (removed afterwards).
    SIGTERM and SIGINT are forwarded as SIGTERM (the daemon then asks its processors to checkpoint
    and stops); a second one, or :data:`STOP_TIMEOUT` seconds without an exit, SIGKILLs the JVM, and
    its record processors exit when their stdin closes. The daemon stays in our process group.
    """
    java_path = find_java(java)
    jars = find_jar_dir(jar_dir)
    with contextlib.ExitStack() as stack:
        if properties_file:
            path = Path(properties_file).resolve()
        else:
            path = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qldbstream-kcl-")))
                / "kcl.properties"
            )
        path.write_text(render_properties(props), encoding="utf-8")
        command = daemon_command(java_path, jars, path, jvm_options)
        sys.stderr.write(
            f"qldbstream kcl: starting the KCL MultiLangDaemon ({props.get('workerId')}): {path}\n"
        )
        sys.stderr.flush()
        process = subprocess.Popen(  # noqa: S603 - our own java command line, no shell
            command, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL
        )
        return _supervise(process)


def _supervise(process: subprocess.Popen[bytes]) -> int:
    """Forward SIGTERM/SIGINT to ``process`` and wait for it; see :func:`run_daemon`."""
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if len(stopping) == 1:
                sys.stderr.write(f"qldbstream kcl: {signal.Signals(signum).name}; stopping the daemon\n")
                process.send_signal(signal.SIGTERM)
            else:
                process.kill()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    kill_at: float | None = None
    try:
        while (code := _poll(process)) is None:
            if stopping and kill_at is None:
                kill_at = time.monotonic() + STOP_TIMEOUT
            if kill_at is not None and time.monotonic() > kill_at:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            time.sleep(0.2)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if stopping and code in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        return 0  # it stopped because we asked it to
    return code if code >= 0 else 128 - code


def _poll(process: subprocess.Popen[bytes]) -> int | None:
    """The daemon's exit status, or None while it runs. As PID 1 (a container), reap every orphan too."""
    if os.getpid() != 1:
        return process.poll()
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return process.returncode if process.returncode is not None else 0
        if pid == 0:
            return process.returncode
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
