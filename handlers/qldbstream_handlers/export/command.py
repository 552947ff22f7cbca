"""``qldbstream export``: a bounded export of a QLDB stream to Parquet files, resumable.

Drives the standalone worker (:mod:`qldbstream.runtimes.worker`) with one handler, the ``export`` plugin
(:mod:`qldbstream_handlers.export`): every verified revision with ``--from <= txTime < --until``
becomes a row; records that fail verification or cannot be written go under the error prefix with
the reason. Checkpoints live in the destination (``_export/``), so running the same command again
after a crash or Ctrl-C resumes where it stopped, without duplicate rows.

A sub-command of ``qldbstream`` contributed by this distribution (entry-point group
``qldbstream.commands``): it lives here, beside the handler it drives, so the core never imports
the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

if TYPE_CHECKING:
    from qldbstream.runtimes.worker import ShardStatus, Worker
    from qldbstream_handlers.export import ExportHandler, ExportOptions, Storage

__all__ = ["register", "run"]

EXAMPLES = """\
bounds:
  --from and --until bound the revision's txTime (commit time), like a bounded QLDB stream's
  InclusiveStartTime and ExclusiveEndTime. Each shard is read until CONTROL COMPLETED or its end.

examples:
  qldbstream export --stream ledger-export-2024 --from 2024-01-01T00:00:00Z \\
      --until 2025-01-01T00:00:00Z --to s3://exports/qldb-export
  qldbstream export --stream s --to ./export --partition year=YYYY/month=MM/ --compression zstd
  qldbstream export --stream s --endpoint-url http://127.0.0.1:5000 --to ./export --format jsonl

output: <to>/year=YYYY/<shard>-<sequence number>-<sub-sequence>.parquet; errors under <to>/_errors
(or --errors); checkpoints and manifests under <to>/_export. Run it again to resume.
exit status: 0 done, 1 done but records went to the error prefix (or a run-time failure),
2 bad options or a missing stream.
"""

#: Kinesis arrival is after the commit; reading from --from minus this margin loses nothing.
ARRIVAL_MARGIN = timedelta(minutes=5)
#: Consecutive halted polls of one shard before the export gives up (the cause is printed).
MAX_HALTS = 6


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a QLDB stream's revisions to Parquet on S3 or a directory (bounded, resumable)",
        description="Read every shard of a Kinesis stream of QLDB journal records, verify them, and write "
        "the revisions committed in [--from, --until) as partitioned, compressed Parquet files.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stream", metavar="NAME", help="the Kinesis data stream (setting stream_name)")
    p.add_argument("--to", dest="to", metavar="DEST", required=True, help="s3://BUCKET/PREFIX or a directory")
    p.add_argument("--from", dest="start", metavar="TIMESTAMP", help="inclusive start (txTime, ISO 8601)")
    p.add_argument("--until", dest="end", metavar="TIMESTAMP", help="exclusive end (txTime, ISO 8601)")
    p.add_argument("--endpoint-url", metavar="URL", help="one endpoint for Kinesis and S3 (local stacks)")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: from the environment)")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="file format")
    p.add_argument(
        "--compression", choices=("snappy", "gzip", "zstd", "none"), help="default: snappy (jsonl: gzip)"
    )
    p.add_argument(
        "--partition",
        default="year=YYYY/",
        metavar="PATTERN",
        help="e.g. year=YYYY/month=MM/ (YYYY MM DD HH TABLE)",
    )
    p.add_argument("--tables", metavar="T1,T2", help="only these tables (default: all)")
    p.add_argument("--errors", metavar="DEST", help="error prefix (default: DEST/_errors)")
    p.add_argument("--no-json", action="store_true", help="leave the data_json column empty")
    p.add_argument("--config", metavar="FILE", help="settings file (stream, region, endpoints, retries)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal")
    p.set_defaults(handler=run)


def _time(flag: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise InputError(f"{flag} {text!r} needs a time zone, e.g. 2024-01-01T00:00:00Z")
    return when


def _options(args: argparse.Namespace) -> ExportOptions:
    from qldbstream_handlers.export import ExportOptions

    tables = frozenset(t.strip() for t in (args.tables or "").split(",") if t.strip()) or None
    try:
        return ExportOptions(
            start=_time("--from", args.start),
            end=_time("--until", args.end),
            tables=tables,
            format=args.format,
            compression=args.compression,
            partition=args.partition,
            json_column=not args.no_json,
        )
    except ConfigurationError as exc:
        raise InputError(str(exc).removeprefix("export: ")) from None


def _claim(storage: Storage, options: ExportOptions, stream: str) -> None:
    """Record what this destination holds; refuse to mix exports with other options (one line)."""
    doc = {
        "stream": stream,
        "from": options.start.isoformat() if options.start else None,
        "until": options.end.isoformat() if options.end else None,
        "tables": sorted(options.tables) if options.tables else None,
        "format": options.format,
        "compression": options.file_format().compression,
        "partition": options.partition,
    }
    blob = storage.get("_export/export.json")
    if blob is not None:
        previous = json.loads(blob)
        if previous != doc:
            changed = sorted(k for k in doc if previous.get(k) != doc[k])
            raise InputError(
                f"{storage.url()} holds an export with other {', '.join(changed)}; resume it with the same "
                "options or choose another destination"
            )
        return
    storage.put("_export/export.json", json.dumps(doc, indent=1).encode())


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    if args.poll_interval <= 0:
        raise InputError("--poll-interval must be positive")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "qldbstream export writes Parquet and needs pyarrow: pip install pyarrow"
        ) from None
    options = _options(args)
    try:
        return _export(args, options)
    except (ClientError, BotoCoreError) as exc:
        raise QldbStreamError(f"an AWS call failed: {exc}") from exc
    except OSError as exc:
        raise QldbStreamError(f"cannot write the export: {exc}") from exc


def _export(args: argparse.Namespace, options: ExportOptions) -> int:
    from qldbstream.app.assembly import App
    from qldbstream.app.config import load_settings
    from qldbstream.core.dedupe import LatePolicy
    from qldbstream.io.kinesis_reader import TRIM_HORIZON, StartPosition
    from qldbstream.pipeline.batch import VerificationAction
    from qldbstream.runtimes.worker import Worker, WorkerOptions
    from qldbstream_handlers.export import (
        DestinationCheckpointStore,
        ErrorPrefixDeadLetterQueue,
        ExportHandler,
        open_storage,
    )

    env = dict(os.environ)
    for flag, name in (("stream", "STREAM_NAME"), ("endpoint_url", "ENDPOINT_URL"), ("region", "REGION")):
        if getattr(args, flag):
            env[f"QLDBSTREAM_{name}"] = getattr(args, flag)
    settings = load_settings(env, args.config)
    stream = settings.stream_name
    if not stream:
        raise InputError("no stream to export: give --stream NAME")
    # Every revision counts once, whatever its order: older versions arriving late are exported too.
    settings = replace(
        settings,
        handlers=(),
        late_policy=LatePolicy.DELIVER_LATE,
        verification_action=VerificationAction.DEAD_LETTER,
    )
    s3 = {"endpoint_url": settings.endpoint("s3"), "region": settings.region}
    storage = open_storage(args.to, **s3)
    errors = open_storage(args.errors, **s3) if args.errors else open_storage(storage.url("_errors"), **s3)
    _claim(storage, options, stream)
    handler = ExportHandler(storage=storage, errors=errors, options=options)
    dlq = ErrorPrefixDeadLetterQueue(errors)
    app = App(settings, handlers=[handler], dlq=dlq)
    start = (
        TRIM_HORIZON if options.start is None else StartPosition.at_timestamp(options.start - ARRIVAL_MARGIN)
    )
    worker = Worker.from_app(
        app,
        DestinationCheckpointStore(storage),
        options=WorkerOptions(
            start=start,
            stop_at_completed=True,
            batch_min=settings.batch_min,
            batch_max=settings.batch_max,
            batch_target_ms=settings.batch_target_ms,
            poll_interval=args.poll_interval,
            halt_backoff=0.5,
            halt_backoff_cap=5.0,
            checkpoint_key=stream,
        ),
    )
    dead_before = len(dlq)
    failure: list[str] = []
    try:
        with _signals(worker), _progress(worker, handler, options, failure, enabled=not args.no_progress):
            report = worker.run(until_caught_up=True)
    finally:
        app.close()
    if failure:
        raise QldbStreamError(failure[0])
    p = handler.progress
    dead = len(dlq) - dead_before
    sys.stderr.write(
        f"qldbstream export: {report.reason}; {p.rows} revisions in {p.files} files to {storage.url()}"
        f" ({p.errors} unwritable and {dead} unverified records under {errors.url()}, "
        f"{p.duplicates} duplicate deliveries skipped)\n"
    )
    return 1 if p.errors or dead else 0


@contextlib.contextmanager
def _signals(worker: Worker) -> Iterator[None]:
    from qldbstream.cli.run import stop_on_signals

    try:
        with stop_on_signals(worker):
            yield
    except ValueError:  # not the main thread (embedded use): no signal handling
        yield


@contextlib.contextmanager
def _progress(
    worker: Worker, handler: ExportHandler, options: ExportOptions, failure: list[str], *, enabled: bool
) -> Iterator[None]:
    """A progress bar over the --from..--until span (by the newest txTime written) on a terminal;
    and, always, giving up on a shard that keeps halting (the reason becomes the error line)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    halts: dict[str, int] = {}

    def watch(status: ShardStatus) -> None:
        halts[status.shard_id] = halts.get(status.shard_id, 0) + 1 if status.halt_reason else 0
        if halts[status.shard_id] >= MAX_HALTS and not failure:
            failure.append(f"shard {status.shard_id} keeps failing: {status.halt_reason}")
            worker.stop()

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        worker.on_progress = watch
        yield
        return
    span = None
    if options.start is not None and options.end is not None:
        span = (options.end - options.start).total_seconds()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("exporting", total=span)

        def update(status: ShardStatus) -> None:
            watch(status)
            p = handler.progress
            shards = worker.status().values()
            done = sum(s.finished for s in shards)
            text = f"{p.rows} revisions, {p.errors} errors, {done}/{len(shards)} shards done"
            completed = None
            if span is not None and options.start is not None:
                # the slowest shard still being read says how far the export is (each is in journal order)
                reading = [p.newest_by_shard.get(s.shard_id) for s in shards if not s.finished]
                if not reading:
                    completed = span
                elif None not in reading:
                    slowest = min(t for t in reading if t is not None)
                    completed = min(span, max(0.0, slowest - options.start.timestamp()))
            bar.update(task, description=text, completed=completed)

        worker.on_progress = update
        yield
