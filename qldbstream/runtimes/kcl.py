"""The KCL record processor process: what ``python -m qldbstream.kcl`` runs under the MultiLangDaemon.

::

    MultiLangDaemon (JVM): leases, GetRecords, KPL deaggregation, checkpoints in its lease table
        │  starts one ``python -m qldbstream.kcl`` per leased shard; JSON lines on its stdin/stdout
        ▼
    KclRecordProcessor ─► Pipeline.process(shard, unfinished + new user records) ─► checkpoint

The daemon hands over user records (it deaggregates KPL records itself); each keeps its sub-sequence
number, so the checkpoint - exactly ``result.checkpoint`` - names the last finished user record.
What happens next (docs/kcl.md has the whole table):

* a **halted** batch (breaker open, sink or DLQ down, the pipeline raising): the daemon never
  delivers a record twice, so the unfinished records - from ``result.first_unfinished`` on - stay in
  this process and are tried again with backoff, within a call while its budget lasts and on every
  later call (``callProcessRecordsEvenForEmptyRecordList`` keeps calls coming on an idle shard); new
  records queue behind them, and beyond ``max_pending`` a call blocks until they drain;
* ``shardEnded`` blocks until everything is finished, then checkpoints ``SHARD_END``;
  ``leaseLost`` never checkpoints; ``shutdownRequested`` checkpoints what is finished; a checkpoint
  refused with ``ShutdownException``/``InvalidStateException`` stops all checkpointing;
* an exception escaping the adapter is logged and the process exits (status 70) instead of kclpy
  swallowing it; the daemon then exits too and every shard resumes from its last checkpoint;
* stdout is the protocol's alone: :func:`isolate_stdio` gives kclpy a private copy and sends fd 1
  (``print``, C extensions, child processes) to stderr.

This module is the process (options, stdio, :class:`GuardedKCLProcess`, :func:`main`); the processor
is :mod:`qldbstream.runtimes.kcl_processor`, the checkpoints :mod:`qldbstream.runtimes.kcl_checkpoint`
(both re-exported here).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from amazon_kclpy import kcl

from qldbstream.core.errors import ConfigurationError
from qldbstream.runtimes.kcl_checkpoint import CheckpointFailure
from qldbstream.runtimes.kcl_processor import (
    KclRecordProcessor,
    ParentGone,
    ProcessorOptions,
    kinesis_record,
)

if TYPE_CHECKING:
    from qldbstream.app.assembly import App

__all__ = [
    "EXIT_ADAPTER_BUG",
    "CheckpointFailure",
    "GuardedKCLProcess",
    "KclRecordProcessor",
    "ProcessorOptions",
    "kinesis_record",
    "main",
]

log = logging.getLogger("qldbstream.kcl")

#: Exit status when an exception escapes the adapter (the daemon then exits and is restarted).
EXIT_ADAPTER_BUG = 70


class GuardedKCLProcess(kcl.KCLProcess):  # type: ignore[misc]  # kclpy has no type hints
    """``KCLProcess`` that does not swallow processor exceptions: it logs them and exits (status 70).

    kclpy's own ``_perform_action`` prints the traceback and answers "done", as if the records had been
    processed; exiting instead makes the daemon restart the shard from its last checkpoint.
    """

    def _perform_action(self, action: Any) -> None:
        try:
            action.dispatch(self.checkpointer, self.processor)
        except ParentGone:
            log.error("the MultiLangDaemon is gone; exiting")
            raise SystemExit(EXIT_ADAPTER_BUG) from None
        except Exception:
            log.critical(
                "unexpected error handling %r; exiting so the daemon restarts the shard",
                action.action,
                exc_info=True,
            )
            raise SystemExit(EXIT_ADAPTER_BUG) from None


# --- the process the daemon starts ---------------------------------------------------------------


def isolate_stdio() -> tuple[IO[str], IO[str]]:
    """Reserve stdin/stdout for the protocol: return private copies; fds 0/1 become /dev/null/stderr.

    After this, ``print`` (``sys.stdout`` is ``sys.stderr``), C extensions and child processes that
    write to fd 1 land on stderr, and nothing but kclpy can read the daemon's messages.
    """
    sys.stdout.flush()
    protocol_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # sys.stdin (still fd 0) now reads nothing
    os.close(devnull)
    sys.stdout = sys.stderr  # the old object stays alive in sys.__stdout__ and writes to fd 1 = stderr
    return protocol_in, protocol_out


def _options(argv: Sequence[str] | None) -> tuple[ProcessorOptions, str | None]:
    d = ProcessorOptions()
    p = argparse.ArgumentParser(
        prog="python -m qldbstream.kcl",
        description="The qldbstream record processor the KCL MultiLangDaemon starts per shard "
        "(executableName); configuration comes from QLDBSTREAM_* / QLDBSTREAM_CONFIG.",
    )
    p.add_argument("--config", help="configuration file (default: $QLDBSTREAM_CONFIG)")
    p.add_argument("--call-budget", type=float, default=d.call_budget, help="seconds per call for retries")
    p.add_argument("--halt-backoff", type=float, default=d.halt_backoff, help="first retry delay (s)")
    p.add_argument(
        "--halt-backoff-cap", type=float, default=d.halt_backoff_cap, help="longest retry delay (s)"
    )
    p.add_argument("--max-pending", type=int, default=d.max_pending, help="unfinished records kept at most")
    a = p.parse_args(argv)
    try:
        options = ProcessorOptions(a.call_budget, a.halt_backoff, a.halt_backoff_cap, a.max_pending)
    except ConfigurationError as exc:
        p.error(str(exc))
    return options, a.config


def build_processor(app: App, options: ProcessorOptions) -> KclRecordProcessor:
    """The processor over ``app``'s pipeline and handlers, watching this process's parent (the daemon)."""
    parent = os.getppid()
    return KclRecordProcessor(
        app.pipeline(), app.handlers, options, parent_alive=lambda: os.getppid() == parent
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one shard's processor until the daemon closes stdin; the exit status says how it ended.

    0: the daemon ended the conversation; 2: bad configuration (logged; the daemon then exits);
    70: an unexpected error (logged, see :class:`GuardedKCLProcess`).
    """
    options, config_file = _options(argv)  # --help and usage errors print before stdout is taken over
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the daemon's to handle
    protocol_in, protocol_out = isolate_stdio()
    from qldbstream.app.assembly import App
    from qldbstream.io.logs import configure_logging

    configure_logging()
    try:
        app = App.from_env(config_file=config_file)  # configures logging as the settings say
        processor_ = build_processor(app, options)
        app.warn_if_stores_in_memory("the KCL record processor")
    except ConfigurationError as exc:
        log.error("configuration: %s", exc)
        return 2
    try:
        GuardedKCLProcess(
            processor_, input_file=protocol_in, output_file=protocol_out, error_file=sys.stderr
        ).run()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        app.close()
        _mark_prometheus_process_dead()
    return 0


def _mark_prometheus_process_dead() -> None:
    """Under ``metrics = prometheus:PORT`` the launcher aggregates the processors' files: drop our gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    sys.exit(main())
