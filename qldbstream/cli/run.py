"""``qldbstream run``: the standalone worker - every shard of a stream, checkpoints in DynamoDB; with
``--source``, a bounded replay of an archive through the same handlers (:mod:`qldbstream.cli.run_archive`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from qldbstream.cli.common import STREAM_FLAGS, add_stream_options, environ_with_flags
from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

if TYPE_CHECKING:
    from qldbstream.app.assembly import App
    from qldbstream.app.config import Settings
    from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore
    from qldbstream.runtimes.worker import ShardStatus, Worker, WorkerReport

__all__ = ["end_report", "register", "run", "stop_on_signals"]

EXAMPLES = """\
modes:
  continuous   start_position TRIM_HORIZON (default) or LATEST; runs until SIGTERM/SIGINT
  catch-up     --from TIMESTAMP: start at that arrival time, then keep going
  bounded      --until TIMESTAMP (with or without --from): each shard stops at its first record
               that arrived at or after it, or after a CONTROL COMPLETED; exits when all are done
  A checkpoint in the table wins over the start position: a restart resumes where it stopped.
  replay       --source records:PATH (saved Kinesis records: files or a directory) or
               --source export:DIR-or-s3://BUCKET/PREFIX (a QLDB journal export): the archive through
               the same handlers, in journal order, then exit; --checkpoint-file PATH lets an
               interrupted replay resume (docs/worker.md, "Replaying archives")

examples:
  qldbstream run --config worker.toml
  qldbstream run --stream my-ledger-stream --checkpoint-table my-app-checkpoints
  qldbstream run --stream s --endpoint-url http://127.0.0.1:4566 --create-table --until-caught-up
  qldbstream run --stream s --from 2024-01-01T00:00:00Z --until 2024-02-01T00:00:00Z
  qldbstream run --source records:saved-events/ --checkpoint-file replay.json
  qldbstream run --source export:s3://my-bucket/exports/ledger/ --checkpoint-file replay.json

signals: SIGTERM or SIGINT lets the batch in progress finish, checkpoints, releases every shard
and exits 0; a second signal exits at once with 130 (SIGINT) or 143 (SIGTERM).
exit status: 0 stopped or done, 1 a run-time failure (a halt), 2 bad configuration, a missing stream
or an unreadable archive.
"""

#: the stream flags, and one more for the worker
_FLAGS = {**STREAM_FLAGS, "checkpoint_table": "CHECKPOINT_TABLE"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the standalone worker: read every shard, run the handlers, checkpoint in DynamoDB",
        description="Read every shard of a Kinesis stream (parents before children), run each batch "
        "through the verification pipeline and the configured handlers, checkpoint after every batch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_stream_options(p)
    p.add_argument("--from", dest="start", metavar="TIMESTAMP", help="start at this arrival time (ISO 8601)")
    p.add_argument("--until", dest="end", metavar="TIMESTAMP", help="bounded export: stop at this time")
    p.add_argument("--until-caught-up", action="store_true", help="exit once every shard is caught up")
    p.add_argument("--checkpoint-table", metavar="TABLE", help="DynamoDB table for the checkpoints")
    p.add_argument("--create-table", action="store_true", help="create the checkpoint table if missing")
    p.add_argument(
        "--poll-interval", type=float, default=1.0, metavar="SECONDS", help="idle shard poll (default 1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display on a terminal")
    p.add_argument(
        "--source",
        metavar="SPEC",
        help="replay an archive instead of a stream: records:PATH[,PATH] or export:DIR-or-s3://URL",
    )
    p.add_argument("--checkpoint-file", metavar="PATH", help="--source: keep checkpoints in this JSON file")
    p.add_argument(
        "--progress", action="store_true", help="--source: progress lines on stderr even when not a terminal"
    )
    p.set_defaults(handler=run)


def _timestamp(flag: str, text: str) -> str:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise InputError(f"{flag} {text!r} needs a time zone, e.g. 2024-01-01T00:00:00Z")
    return when.isoformat()


def _environ(args: argparse.Namespace) -> dict[str, str]:
    env = environ_with_flags(args, _FLAGS)
    if args.start:
        env["QLDBSTREAM_START_POSITION"] = "AT_TIMESTAMP"
        env["QLDBSTREAM_START_TIME"] = _timestamp("--from", args.start)
    if args.end:
        env["QLDBSTREAM_END_TIME"] = _timestamp("--until", args.end)
    return env


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from qldbstream.app.assembly import App
    from qldbstream.runtimes.worker import Worker, WorkerOptions

    if args.poll_interval <= 0:
        raise InputError("--poll-interval must be positive")
    if getattr(args, "source", None):
        from qldbstream.cli.run_archive import run_archive

        return run_archive(args)
    if getattr(args, "checkpoint_file", None):
        raise InputError("--checkpoint-file is for --source replays; the worker checkpoints in DynamoDB")
    try:
        app = App.from_env(_environ(args), config_file=args.config)
    except (ClientError, BotoCoreError) as exc:  # e.g. no region for the DLQ or dedupe clients
        raise ConfigurationError(f"cannot set up the AWS clients: {exc}") from exc
    _configure_logging(app.settings)
    try:
        if not app.settings.stream_name:
            raise ConfigurationError("no stream to read: give --stream NAME or set stream_name")
        options = WorkerOptions.from_settings(app.settings, poll_interval=args.poll_interval)
        worker = Worker.from_app(app, _store(app, create=args.create_table), options=options)
        with stop_on_signals(worker), _progress(worker, enabled=not args.no_progress):
            report = worker.run(until_caught_up=args.until_caught_up)
    except (ClientError, BotoCoreError) as exc:
        raise QldbStreamError(f"an AWS call failed: {exc}") from exc
    finally:
        app.close()
    return end_report(report)


def end_report(report: WorkerReport, extra: str = "") -> int:
    """The one line ``qldbstream run`` ends with on stderr; the exit status (1 when halted)."""
    done = sum(s.finished for s in report.shards.values())
    if report.reason == "halted":
        halted = {sid: s.halt_reason for sid, s in report.shards.items() if s.halt_reason}
        first = next(iter(halted.items()), ("?", "?"))
        sys.stderr.write(
            f"qldbstream run: halted: shard {first[0]} cannot move on ({first[1]}); "
            f"{len(halted)} shard(s) halted, checkpoints kept - fix the cause and run again{extra}\n"
        )
        return 1
    sys.stderr.write(
        f"qldbstream run: {report.reason}; {report.records} records read, "
        f"{done} of {len(report.shards)} shards finished{extra}\n"
    )
    return 0


def _store(app: App, *, create: bool) -> DynamoDBCheckpointStore:
    """The settings' DynamoDB checkpoint table (created first with ``create``)."""
    from qldbstream.io.checkpoint_dynamodb import DynamoDBCheckpointStore

    client, table = app.client("dynamodb"), app.settings.checkpoint_table
    if create:
        DynamoDBCheckpointStore.create_table(client, table)
    return DynamoDBCheckpointStore(client, table)


class Stoppable(Protocol):
    """What the signals stop: the worker, an archive replay."""

    def stop(self) -> None: ...


@contextlib.contextmanager
def stop_on_signals(worker: Stoppable, exit_now: Callable[[int], object] = os._exit) -> Iterator[None]:
    """SIGTERM/SIGINT: the first stops ``worker`` after its batch; a second one calls ``exit_now`` at once.

    The previous handlers come back when the block ends. Only the main thread can install handlers.
    """
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) > 1:
            sys.stderr.write(f"qldbstream run: {name} again; exiting now without a checkpoint\n")
            sys.stderr.flush()
            exit_now(128 + signum)
            return
        sys.stderr.write(f"qldbstream run: {name}; finishing the current batch (again to exit now)\n")
        worker.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _progress(worker: Worker, *, enabled: bool) -> Iterator[None]:
    """A per-shard table on a terminal's stderr: lag, records, checkpoint, state."""
    from qldbstream.extras import stderr_console

    console = stderr_console("the progress table (--no-progress for none)") if enabled else None
    if console is None:
        yield
        return
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table(
            "shard", "behind (ms)", "records", "checkpoint", "state", title=f"stream {worker.stream_name}"
        )
        for s in worker.status().values():
            t.add_row(s.shard_id, _num(s.millis_behind_latest), str(s.records_read), _cp(s), _state(s))
        return t

    with Live(table(), console=console, transient=True, refresh_per_second=2) as live:
        shown = [0.0]

        def update(_: ShardStatus) -> None:
            if time.monotonic() - shown[0] >= 0.5:
                shown[0] = time.monotonic()
                live.update(table())

        worker.on_progress = update
        yield


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cp(s: ShardStatus) -> str:
    return "-" if s.checkpoint is None else f"{s.checkpoint[0][-12:]}/{s.checkpoint[1]}"


def _state(s: ShardStatus) -> str:
    if s.finished:
        return f"done ({s.end_reason})"
    return f"halted: {s.halt_reason}" if s.halt_reason else "reading"


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (masking: the masked traceback)
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def _configure_logging(settings: Settings) -> None:
    """Log to stderr (JSON or text, at the configured level) unless logging is already set up."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(_Stderr())  # above the progress display, which swaps sys.stderr
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
