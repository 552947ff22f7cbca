"""``qldbstream run --source``: replay an archive (saved Kinesis records, a journal export) through the
handlers, with checkpoints, a progress display and the worker's end report.

The checkpoint store: ``--checkpoint-file PATH`` (a local JSON file), else the DynamoDB table when one
is configured (``--checkpoint-table``, ``QLDBSTREAM_CHECKPOINT_TABLE`` or a ``checkpoint_table``
other than the default), else memory - said on stderr: an interrupted replay then starts again
from the beginning, and only the de-duplication store keeps handlers from seeing records twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from qldbstream.core.errors import ConfigurationError, InputError, QldbStreamError

if TYPE_CHECKING:
    from qldbstream.app.assembly import App
    from qldbstream.pipeline.checkpoint import CheckpointStore
    from qldbstream.runtimes.archive import ArchiveReplay
    from qldbstream.runtimes.worker_report import ShardStatus

__all__ = ["run_archive"]

#: flags that only make sense for a live stream
_STREAM_ONLY = {
    "stream": "--stream",
    "start": "--from",
    "end": "--until",
    "until_caught_up": "--until-caught-up",
}


def run_archive(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from qldbstream.app.assembly import App
    from qldbstream.cli.run import _configure_logging, _environ, end_report, stop_on_signals
    from qldbstream.io.archive_sources import open_source
    from qldbstream.runtimes.archive import ArchiveReplay

    given = [flag for dest, flag in _STREAM_ONLY.items() if getattr(args, dest, None)]
    if given:
        raise InputError(f"--source replays an archive: {', '.join(given)} apply to a live stream only")
    try:
        app = App.from_env(_environ(args), config_file=args.config)
    except (ClientError, BotoCoreError) as exc:
        raise ConfigurationError(f"cannot set up the AWS clients: {exc}") from exc
    _configure_logging(app.settings)
    try:
        s3 = app.client("s3") if args.source.startswith("export:s3://") else None
        source = open_source(args.source, s3_client=s3)
        store = _store(app, args)
        replay = ArchiveReplay(
            source,
            app.pipeline(journal_order=source.journal_order),
            store,
            f"{app.settings.application_name}/{source.location}",
            app.handlers,
            app.metrics,
        )
        with stop_on_signals(replay), _progress(replay, args):
            report = replay.run()
    except (ClientError, BotoCoreError) as exc:
        raise QldbStreamError(f"an AWS call failed: {exc}") from exc
    except OSError as exc:  # the checkpoint file cannot be written: what was saved before stays
        raise QldbStreamError(f"cannot write the checkpoint file: {exc}") from exc
    finally:
        app.close()
    return end_report(report, f"; {replay.counts.describe()}")


def _store(app: App, args: argparse.Namespace) -> CheckpointStore:
    from qldbstream.app.config import Settings
    from qldbstream.cli.run import _store as dynamodb_store
    from qldbstream.io.checkpoint_file import FileCheckpointStore
    from qldbstream.pipeline.checkpoint import InMemoryCheckpointStore

    if args.checkpoint_file:
        return FileCheckpointStore(args.checkpoint_file)
    configured = app.settings.checkpoint_table != Settings().checkpoint_table
    if args.checkpoint_table or os.environ.get("QLDBSTREAM_CHECKPOINT_TABLE") or configured:
        return dynamodb_store(app, create=args.create_table)
    sys.stderr.write(
        "qldbstream run: checkpoints in memory - an interrupted replay starts again from the beginning; "
        "give --checkpoint-file PATH to resume\n"
    )
    return InMemoryCheckpointStore()


@contextlib.contextmanager
def _progress(replay: ArchiveReplay, args: argparse.Namespace) -> Iterator[None]:
    """A table per pseudo-shard on a terminal's stderr (or lines every few seconds with ``--progress``
    when stderr is not a terminal); none with ``--no-progress``."""
    from qldbstream.extras import stderr_console

    if args.no_progress:
        yield
        return
    console = stderr_console("the progress table (--no-progress for none)")
    if console is None and not args.progress:
        yield
        return
    shown = [0.0]
    if console is None:

        def line(_: ShardStatus) -> None:
            if time.monotonic() - shown[0] >= 2.0:
                shown[0] = time.monotonic()
                sys.stderr.write(f"qldbstream run: {_totals(replay)}\n")

        replay.on_progress = line
        yield
        return
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table("pseudo-shard", "records", "checkpoint", "state", title=f"{_totals(replay)}")
        totals = replay.totals()
        for s in replay.status().values():
            total = totals.get(s.shard_id)
            read = f"{s.records_read}/{total}" if total is not None else str(s.records_read)
            cp = "-" if s.checkpoint is None else f"{s.checkpoint[0][-12:]}/{s.checkpoint[1]}"
            state = "done" if s.finished else f"halted: {s.halt_reason}" if s.halt_reason else "reading"
            t.add_row(s.shard_id[-40:], read, cp, state)
        return t

    with Live(table(), console=console, transient=True, refresh_per_second=2) as live:

        def update(_: ShardStatus) -> None:
            if time.monotonic() - shown[0] >= 0.5:
                shown[0] = time.monotonic()
                live.update(table())

        replay.on_progress = update
        yield


def _totals(replay: ArchiveReplay) -> str:
    status = replay.status().values()
    read = sum(s.records_read for s in status)
    total = sum(n for n in replay.totals().values() if n is not None)
    of = f"/{total}" if total else ""
    return f"{replay.source.location}: {read}{of} records read, {replay.counts.describe()}"
