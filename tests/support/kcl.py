"""Run the real KCL MultiLangDaemon (amazon-kclpy's jars) against the local servers, on 127.0.0.1 only.

* Kinesis must be **kinesis-local**: the daemon's Kinesis client is forced to HTTP/2 (h2c prior knowledge
  on ``http://``), which moto does not speak. CBOR stays on; kinesis-local answers it.
* DynamoDB (lease, WorkerMetricStats and CoordinatorState tables) is **moto server** (HTTP/1.1).
* ``metricsLevel = NONE``: there is no CloudWatch endpoint property, and nothing should call AWS.
* Credentials come from the environment (``DefaultCredentialsProvider``); the daemon gets dummy ones.

The jars are the ones ``deploy/kcl/install.sh`` put in ``amazon_kclpy/jars`` of this interpreter's
environment. A daemon is stopped by PID (SIGTERM, then SIGKILL of its process group, which holds the
per-shard record processors it spawned); :meth:`KclDaemon.kill` SIGKILLs it at once, as a crashed
worker. Daemons still running at interpreter exit are killed by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "FAST_TEST_PROPERTIES",
    "MAIN_CLASS",
    "DaemonSettings",
    "KclDaemon",
    "KclNotInstalledError",
    "jar_dir",
    "render_properties",
    "start_daemon",
    "stop_all",
]

#: The daemon's entry point (amazon_kclpy's ``samples/amazon_kclpy_helper.py``).
MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"

#: Heap capped so two daemons fit a 2-core CI machine next to the servers (RSS stays ~250 MB each).
JVM_OPTIONS = ("-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

#: KCL 3 timings shrunk for tests. The defaults (failover 10 s, lease assignment every 20 s, worker
#: metrics every 30 s) put the first record ~60 s after start-up; these put it ~5-35 s after (the rest is
#: the KCL's hard-coded random 1-30 s wait for an empty lease table, see deploy/kcl/README.md).
FAST_TEST_PROPERTIES: Mapping[str, str] = {
    # Without it the KCL drops whole KPL aggregates whose user records' partition keys hash outside
    # the shard (every QLDB aggregate on a multi-shard stream): awslabs/amazon-kinesis-client#343.
    "skipShardSyncAtWorkerInitializationIfLeasesExist": "true",
    # A lease not renewed for this long is expired; the leader reassigns it (KCL 3: only the leader does).
    "failoverTimeMillis": "5000",
    # How often the leader's LeaseAssignmentManager runs; workers look for new leases twice as often.
    "leaseAssignmentIntervalMillis": "1000",
    # The leader assigns leases only to workers whose WorkerMetricStats it has seen (default every 30 s).
    "workerMetricsReporterFreqInMillis": "1000",
    "inMemoryWorkerMetricsCaptureFrequencyMillis": "250",
    "shardSyncIntervalMillis": "1000",
    "parentShardPollIntervalMillis": "500",
    # Polling: one GetRecords per shard every 250 ms, at most 100 records each (several batches per shard).
    "idleTimeBetweenReadsInMillis": "250",
    "maxRecords": "100",
    # On SIGTERM the daemon sends shutdownRequested (the processors checkpoint within ~1 s) and exits after
    # this long. The default 0 skips shutdownRequested. KCL 3.1.3 always logs "Encountered an error during
    # shutdown. TimeoutException" here: it waits for a final processor shutdown that never completes.
    "shutdownGraceMillis": "3000",
}

_running: set[KclDaemon] = set()


class KclNotInstalledError(RuntimeError):
    """amazon-kclpy or its jars are missing from this environment; the message says how to install them."""


def jar_dir() -> Path:
    """``amazon_kclpy/jars`` of this interpreter's environment, checked to hold the daemon's main jar."""
    spec = importlib.util.find_spec("amazon_kclpy")
    hint = f"run `deploy/kcl/install.sh {sys.executable}` (needs Java 17 and Maven)"
    if spec is None or spec.origin is None:
        raise KclNotInstalledError(f"amazon-kclpy is not installed: {hint}")
    jars = Path(spec.origin).parent / "jars"
    if not any(jars.glob("amazon-kinesis-client-multilang-*.jar")):
        raise KclNotInstalledError(f"{jars} has no amazon-kinesis-client-multilang jar: {hint}")
    return jars


@dataclass(frozen=True)
class DaemonSettings:
    """What one daemon needs; ``extra`` overrides or adds properties (``FAST_TEST_PROPERTIES`` by default)."""

    stream_name: str
    application_name: str  # also the lease table's name
    worker_id: str
    executable: tuple[str, ...]  # the record processor command; the daemon splits it on spaces
    kinesis_endpoint: str  # kinesis-local's plain (http://) port
    dynamodb_endpoint: str  # moto server
    region: str = "us-east-1"
    extra: Mapping[str, str] = field(default_factory=lambda: dict(FAST_TEST_PROPERTIES))


def render_properties(settings: DaemonSettings) -> str:
    """The ``.properties`` file of one daemon (every key is one a KCL 3 daemon accepts)."""
    for part in settings.executable:
        if not part or " " in part:
            raise ValueError(f"the daemon splits executableName on spaces; cannot pass {part!r}")
    properties: dict[str, str] = {
        "executableName": " ".join(settings.executable),
        "streamName": settings.stream_name,
        "applicationName": settings.application_name,
        "workerId": settings.worker_id,
        "regionName": settings.region,
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "kinesisEndpoint": settings.kinesis_endpoint,
        "dynamoDBEndpoint": settings.dynamodb_endpoint,
        "metricsLevel": "NONE",
        "retrievalMode": "POLLING",
        "initialPositionInStream": "TRIM_HORIZON",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        **settings.extra,
    }
    return "".join(f"{key} = {value}\n" for key, value in properties.items())


@dataclass(eq=False)
class KclDaemon:
    """One MultiLangDaemon JVM (the leader of its own process group, with its record processors)."""

    worker_id: str
    process: subprocess.Popen[bytes]
    properties_path: Path
    log_path: Path
    started_at: float  # time.monotonic() at spawn
    _log: IO[bytes] = field(repr=False)
    peak_rss_kb: int | None = None  # VmHWM of the JVM, read when it is stopped or killed
    stopped: bool = False  # stop() or kill() was called: an exit is ours, not a crash
    _group_killed: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float) -> float:
        """Wait until a log line matches ``pattern`` (a regex); return seconds since start-up."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.log_text()):
                return time.monotonic() - self.started_at
            if not self.alive():
                raise RuntimeError(
                    f"daemon {self.worker_id} exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"daemon {self.worker_id}: no /{pattern}/ within {timeout:g} s:\n{self.log_tail()}"
        )

    def is_leader(self) -> bool:
        """Whether this worker ever won the KCL 3 leader lock (it logs "Worker : <id> is new leader")."""
        return f"Worker : {self.worker_id} is new leader" in self.log_text()

    def rss_kb(self) -> int | None:
        """Current (VmRSS) resident memory of the JVM alone, in KiB."""
        return _proc_status_kb(self.pid, "VmRSS")

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the JVM (it asks its processors to shut down and checkpoint), then SIGKILL the group."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        self._kill_group()
        self._log.close()

    def terminate(self) -> None:
        """Send SIGTERM and return at once (see :func:`stop_all`)."""
        _running.discard(self)
        self.stopped = True
        if self.alive():
            self.peak_rss_kb = _proc_status_kb(self.pid, "VmHWM")
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the JVM and its record processors at once, as a crashed worker host."""
        _running.discard(self)
        self.stopped = True
        if self.alive():
            self.peak_rss_kb = _proc_status_kb(self.pid, "VmHWM")
        self._kill_group()
        self._log.close()

    def _kill_group(self) -> None:
        # The group is the one start_daemon created for this JVM (start_new_session): its id is our PID.
        # Once only: after that the id may belong to someone else.
        if not self._group_killed:
            self._group_killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def start_daemon(
    settings: DaemonSettings,
    work_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    jvm_options: tuple[str, ...] = JVM_OPTIONS,
) -> KclDaemon:
    """Write ``<work_dir>/<worker>.properties`` and start the daemon, logging to ``<worker>.log``.

    Returns at once; use :meth:`KclDaemon.wait_for_log` to wait for a milestone. ``env`` is added to the
    daemon's environment, which its record processors inherit.
    """
    jars = jar_dir()
    work_dir.mkdir(parents=True, exist_ok=True)
    properties_path = work_dir / f"{settings.worker_id}.properties"
    properties_path.write_text(render_properties(settings))
    log_path = work_dir / f"{settings.worker_id}.log"
    daemon_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JAVA_TOOL_OPTIONS"))},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": settings.region,
        "AWS_EC2_METADATA_DISABLED": "true",
        **(env or {}),
    }
    command = [
        "java",
        *jvm_options,
        "-cp",
        f"{jars}/*",
        MAIN_CLASS,
        "--properties-file",
        str(properties_path),
    ]
    log = log_path.open("wb")
    started_at = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=work_dir,
        env=daemon_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill() reaches the record processors too
    )
    daemon = KclDaemon(settings.worker_id, process, properties_path, log_path, started_at, log)
    _running.add(daemon)
    return daemon


def stop_all(daemons: Iterable[KclDaemon], grace: float = 8.0) -> None:
    """Stop several daemons at once: SIGTERM to all, then wait for (or SIGKILL) each."""
    daemons = list(daemons)
    for daemon in daemons:
        daemon.terminate()
    for daemon in daemons:
        daemon.stop(grace)


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@atexit.register
def _kill_leftovers() -> None:
    for daemon in list(_running):
        with contextlib.suppress(Exception):
            daemon.kill()
