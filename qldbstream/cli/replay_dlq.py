"""``qldbstream replay-dlq``: re-drive dead-lettered records (or batches Lambda discarded) through
the handlers, and delete each entry once it finished (see :mod:`qldbstream.runtimes.replay`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any

from qldbstream.app.assembly import App, NoDeadLetterQueue
from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.io.aws_errors import is_transient
from qldbstream.io.tracing import span
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.dlq import DeadLetterQueue
from qldbstream.runtimes.lambda_failures import (
    FileLambdaFailures,
    LambdaFailureSource,
    SqsLambdaFailures,
    read_range,
    replay_lambda_failures,
)
from qldbstream.runtimes.replay import Replayer, ReplayReport, replay_dead_letters

__all__ = ["register", "run"]

EXAMPLES = """\
what happens:
  Each DLQ entry's record goes through the pipeline again - to the handler that failed on it, or
  to every handler for records that failed to decode or verify. Handlers de-duplicate, so replaying
  twice does no harm. An entry is deleted only when its record finished without failing again; an
  entry that fails again stays as it was (no second entry is written) and the new error is shown.
  On an SQS DLQ an entry that stays is invisible for the queue's visibility timeout.

  --lambda-failures replays what Lambda's on-failure destination (SQS, or files saved from SQS or
  SNS) recorded: each record's shard and sequence number range is read again from the stream and
  re-driven to every handler. Poison records in the range are then dead-lettered, and the
  on-failure message is deleted (files are never changed).

examples:
  qldbstream replay-dlq --dry-run
  qldbstream replay-dlq --dlq dir:./dlq --handler audit --limit 100
  qldbstream replay-dlq --config qldbstream.toml --dlq sqs:https://sqs.eu-west-1.amazonaws.com/123456789012/dlq
  qldbstream replay-dlq --lambda-failures sqs:https://sqs.eu-west-1.amazonaws.com/123456789012/on-failure
  qldbstream replay-dlq --lambda-failures failure-1.json failure-2.json

exit status: 0 everything replayed succeeded (or there was nothing to replay), 1 something still
fails or could not be deleted, 2 the configuration or an input is unusable.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay-dlq",
        help="re-drive dead-lettered records through the handlers; delete what succeeds",
        description="Replay dead-letter queue entries, or Lambda on-failure records, through the handlers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE", help="configuration file (TOML or JSON; default QLDBSTREAM_CONFIG)"
    )
    p.add_argument(
        "--dlq",
        metavar="SPEC",
        help="the DLQ to replay: sqs:<queue url> or dir:<path> (default: the configured dlq)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="replay at most N entries")
    # not dest "handler": that is the sub-command's function (see qldbstream.cli.command)
    p.add_argument(
        "--handler",
        dest="handler_name",
        metavar="NAME",
        help="replay only this handler's entries (only to it)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only decode and verify each record again: no handler runs"
    )
    p.add_argument(
        "--lambda-failures",
        nargs="+",
        metavar="SOURCE",
        help="Lambda on-failure records instead of the DLQ: sqs:<queue url>, or files",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on standard output")
    p.set_defaults(handler=run)


def _lambda_source(specs: list[str], app: App) -> LambdaFailureSource:
    queues = [s for s in specs if s.startswith("sqs:")]
    if not queues:
        return FileLambdaFailures(specs)
    if len(specs) > 1:
        raise InputError("--lambda-failures takes one sqs:<queue url>, or files, not both")
    return SqsLambdaFailures(app.client("sqs"), queues[0][4:])


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    environ = dict(os.environ)
    if args.dlq:
        environ["QLDBSTREAM_DLQ"] = args.dlq  # validated like the setting
    app = App.from_env(environ, config_file=args.config)
    try:
        report = _replay(args, app)
    finally:
        app.close()
    _print(report, args.json)
    return 0 if report.ok else 1


def _replay(args: argparse.Namespace, app: App) -> ReplayReport:
    names = [h.name for h in app.handlers]
    if args.handler_name and args.handler_name not in names:
        raise ConfigurationError(
            f"--handler {args.handler_name}: not an active handler (active: {', '.join(names)})"
        )
    app.setup()
    settings = app.settings.pipeline_settings()

    def pipeline_for(dlq: DeadLetterQueue, only: frozenset[str] | None) -> Pipeline:
        handlers = [h for h in app.handlers if only is None or h.name in only]
        return Pipeline(
            handlers,
            dlq=dlq,
            store=app.store,
            settings=settings,
            metrics=app.metrics,
            allow_hold=False,
            masker=app.masker,
            sealer=app.sealer,
            tracer=span,
            transient=is_transient,
        )

    replayer = Replayer(pipeline_for, names, app.sealer)
    options = {"limit": args.limit, "handler": args.handler_name, "dry_run": args.dry_run}
    if args.lambda_failures:
        source = _lambda_source(args.lambda_failures, app)
        read = partial(read_range, app.client("kinesis"))
        return replay_lambda_failures(source, replayer, read, app.dlq, store=app.store, **options)
    if isinstance(app.dlq, NoDeadLetterQueue):
        raise ConfigurationError("no dead-letter queue is configured: set QLDBSTREAM_DLQ or pass --dlq")
    return replay_dead_letters(app.dlq, replayer, **options)


def _print(report: ReplayReport, as_json: bool) -> None:
    if as_json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    out = [f"qldbstream replay-dlq: {report.summary()}"]
    for o in report.outcomes:
        mark = "ok    " if o.status != "failed" else "FAILED"
        handler = f" [{o.handler}]" if o.handler else ""
        gone = " (deleted)" if o.deleted else ""
        out.append(f"  {mark} {o.kind} {o.id}{handler}: {o.where}: {o.detail}{gone}")
    out.extend(f"  error: {e}" for e in report.errors)
    sys.stdout.write("\n".join(out) + "\n")
