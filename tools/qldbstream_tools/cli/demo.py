"""``qldbstream demo``: the whole runtime path on an embedded local AWS, with a live display and a report."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import InputError
from qldbstream_tools.demo import DemoOptions, DemoProgress, DemoResult, Progress, run_demo

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["register", "render_report", "run"]

EXAMPLES = """\
The demo starts moto in this process on 127.0.0.1 (no AWS account, no Docker), simulates a small
bank's QLDB ledger into a Kinesis stream (duplicates, reordering, one tampered record) and runs
the standalone worker on it - checkpoints and de-duplication in DynamoDB, a directory DLQ - with
every built-in handler: audit log, fraud alerts (SQS + in-process bus), velocity windows (Parquet +
DynamoDB), a Parquet export, a replica in a second region, and the example workflow (SNS +
DynamoDB). Its Prometheus metrics are scraped over HTTP while it runs. At the end everything is
read back and checked against the simulator's ground truth.

exit status: 0 every check passed, 1 a check failed, 2 bad options (e.g. --output not empty).

examples:
  qldbstream demo
  qldbstream demo --output ./demo-out --transactions 400 --shards 8 --seed 7
  qldbstream demo --tamper 'block=40:previousBlockHash' --json > report.json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="simulated ledger -> Kinesis -> standalone worker -> every handler, on an embedded local AWS",
        description="End-to-end showcase on an embedded local AWS (moto on 127.0.0.1), checked against "
        "the simulator's ground truth.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DemoOptions()
    p.add_argument("--seed", type=int, default=d.seed, help=f"simulator seed (default {d.seed})")
    p.add_argument(
        "--transactions",
        type=int,
        default=d.transactions,
        help=f"ledger transactions to simulate (default {d.transactions})",
    )
    p.add_argument("--shards", type=int, default=d.shards, help=f"Kinesis shards (default {d.shards})")
    p.add_argument(
        "--duplicates",
        type=float,
        default=d.duplicate_rate,
        help=f"share of records delivered twice (default {d.duplicate_rate})",
    )
    p.add_argument(
        "--reorder",
        type=int,
        default=d.reorder_window,
        help=f"reordering window (default {d.reorder_window})",
    )
    p.add_argument(
        "--tamper",
        default=d.tamper,
        help=f"what to tamper with, see 'qldbstream simulate --help' (default {d.tamper})",
    )
    p.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="an empty (or new) directory for the files, kept (default: a temporary directory, removed "
        "when every check passed)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on standard output")
    p.add_argument("--no-progress", action="store_true", help="no live display on a terminal's stderr")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.transactions < 1 or not 1 <= args.shards <= 500:
        raise InputError("--transactions must be at least 1 and --shards between 1 and 500")
    options = DemoOptions(
        seed=args.seed,
        transactions=args.transactions,
        shards=args.shards,
        duplicate_rate=args.duplicates,
        reorder_window=args.reorder,
        tamper=args.tamper,
        output=args.output,
    )
    err = Console(stderr=True)
    with _live(err, enabled=not args.no_progress) as progress:
        result = run_demo(options, progress)
    # without --output the files are in a new temporary directory: removed after a run whose checks
    # all passed, kept (the report gives its path) when one failed, to look into
    keep = args.output is not None or not result.ok
    if args.json:
        json.dump(result.report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console(highlight=False)
        render_report(result, out if out.is_terminal else Console(width=120, highlight=False), kept=keep)
    if not keep:
        shutil.rmtree(result.output, ignore_errors=True)
    if not result.ok:
        err.print(
            "[bold red]The demo did not find what the simulator planted:[/] see the failed checks above."
        )
    return 0 if result.ok else 1


# --- the live display ----------------------------------------------------------------------------


@contextmanager
def _live(console: Console, *, enabled: bool) -> Iterator[Progress | None]:
    """A live view of the run on a terminal: the step, then per shard and the pipeline's counters."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.live import Live

    state: dict[str, Any] = {"shown": 0.0, "last": None}
    with Live(console=console, refresh_per_second=4, transient=True) as live:

        def progress(p: DemoProgress) -> None:
            state["last"] = p
            now = time.monotonic()
            if p.stage != "worker" or now - state["shown"] >= 0.25:
                state["shown"] = now
                live.update(_view(p))

        yield progress
    last = state["last"]
    if last is not None:
        console.print(f"[dim]demo finished in {last.elapsed:.1f} s[/]")


def _short(shard_id: str) -> str:
    return shard_id.removeprefix("shardId-").lstrip("0") or "0"


def _view(p: DemoProgress) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(("qldbstream demo ", "bold"), (f"{p.elapsed:5.1f} s  ", "dim"), p.stage)
    if p.total:
        head.append(f"  {p.done}/{p.total}")
    if not p.shards:
        return head
    table = Table(
        "shard",
        "read / put",
        "behind",
        "user records",
        "MillisBehindLatest",
        "iterator age",
        "state",
        box=None,
        padding=(0, 1),
        title="standalone worker, per shard (Kinesis records)",
        title_justify="left",
    )
    for s in p.shards:
        put = p.put.get(s.shard_id, 0)
        table.add_row(
            _short(s.shard_id),
            f"{s.records_read} / {put}",
            str(max(0, put - s.records_read)),
            str(s.user_records),
            "-" if s.millis_behind_latest is None else str(s.millis_behind_latest),
            "-" if s.iterator_age_ms is None else f"{s.iterator_age_ms / 1000:.1f} s",
            f"halted: {s.halt_reason}"
            if s.halt_reason
            else ("at the tip" if s.records_read >= put else "reading"),
        )
    counters = Text(
        f"processed {p.processed} user records · duplicates skipped {p.dedupe_hits} · "
        f"late revisions {p.late} · dead-lettered {p.dead_lettered} · fraud alerts {p.alerts} · "
        f"/metrics scraped {p.scrapes}x"
    )
    return Group(head, table, counters)


# --- the final report ----------------------------------------------------------------------------


def _table(*columns: str, title: str | None = None) -> Any:
    from rich.table import Table

    return Table(*columns, title=title, title_justify="left", box=None, padding=(0, 2), show_edge=False)


def render_report(result: DemoResult, out: Console, *, kept: bool = True) -> None:
    """The report for people (``--json`` prints :attr:`DemoResult.report` instead); ``kept``: the
    files stay where the report says (else they were in a temporary directory, removed)."""
    r = result.report
    led, w = r["ledger"], r["worker"]
    out.rule(f"[bold]qldbstream demo[/] - local AWS at {r['endpoint']} - {r['seconds']} s")
    planted = ", ".join(_failure(f) for f in led["plantedFailures"]) or "nothing"
    out.print(
        f"[bold]Ledger[/]  {led['blocks']} blocks, {led['revisions']} revisions ({led['deletes']} deletes, "
        f"{led['redactions']} redactions), seed {led['seed']}; tampered: {r['options']['tamper']} "
        f"-> must fail {planted}",
        soft_wrap=True,
    )
    out.print(
        f"[bold]Kinesis[/]  {r['kinesis']['stream']}: {led['kinesisRecords']} records put over "
        f"{led['shards']} shards ({led['duplicates']} duplicates, reordered within {r['options']['reorder']})"
    )
    out.print(
        f"[bold]Worker[/]  {w['reason']} after {w['batches']} batches: "
        f"{w['kinesisRecords']} Kinesis records, "
        f"{w['userRecords']} user records; checkpoints in DynamoDB table {w['checkpointTable']}, "
        f"de-duplication in {w['dedupeStore']}",
        soft_wrap=True,
    )
    shards = _table(
        "shard", "Kinesis records", "user records", "MillisBehindLatest", "max iterator age", "checkpoint"
    )
    for s in w["shards"]:
        age = s["maxIteratorAgeMs"]
        shards.add_row(
            _short(s["shardId"]),
            str(s["kinesisRecords"]),
            str(s["userRecords"]),
            f"{s['millisBehindLatest']} (max {s['maxMillisBehindLatest']})",
            "-" if age is None else f"{age / 1000:.1f} s",
            ("saved " if s["checkpointInTable"] else "NOT saved ") + (s["checkpoint"] or "-")[-14:],
        )
    out.print(shards)
    v = r["verification"]
    checks = _table("check", "passed", "failed", "skipped", title="Verified (the verifier's tally)")
    for check, counts in v["checks"].items():
        failed = counts.get("failed", 0)
        checks.add_row(
            check,
            str(counts["passed"]),
            f"[red]{failed}[/]" if failed else "0",
            str(counts.get("skipped", 0)),
        )
    out.print(checks)
    dedupe, late = r["deduplicated"], r["lateRevisions"]
    out.print(
        f"[bold]Deduplicated[/]  {dedupe['total']} duplicate deliveries skipped ("
        + ", ".join(f"{h} {n}" for h, n in dedupe["byHandler"].items())
        + ")"
    )
    out.print(
        "[bold]Late revisions[/]  "
        + (", ".join(f"{n} {action}" for action, n in late.items()) or "none")
        + " (older than a version already delivered; late_policy deliver-late, summed over handlers)"
    )
    dl = r["deadLetters"]
    out.print(f"[bold]Dead-lettered[/]  {dl['count']} in {dl['directory']}")
    for e in dl["entries"]:
        what = f"document {e['documentId']} v{e['version']}" if e["documentId"] else "block summary"
        out.print(f"  {e['stage']}: {what} (block {e['blockSequenceNo']}): {e['reason']}", soft_wrap=True)
    out.print("[bold]Delivered to handlers[/]  " + ", ".join(f"{h} {n}" for h, n in r["delivered"].items()))
    _handlers(r, out)
    _metrics(r, out)
    out.rule("[bold]Checks against the simulator's ground truth")
    for c in r["checks"]:
        mark = "[green]ok  [/]" if c["ok"] else "[bold red]FAIL[/]"
        out.print(f"{mark} {c['name']}: [dim]{c['detail']}[/]", soft_wrap=True)
    verdict = "[bold green]All checks passed.[/]" if r["ok"] else "[bold red]Some checks failed.[/]"
    if kept:
        out.print(
            f"{verdict} Files (kept): {r['output']}  "
            "(report.json, worker.log, dlq/, audit.jsonl, export/, velocity/)"
        )
    else:
        out.print(f"{verdict} The files were in a temporary directory, now removed: --output DIR keeps them.")


def _failure(f: dict[str, Any]) -> str:
    where = f"block {f['sequenceNo']}" + (f", document {f['documentId']}" if f.get("documentId") else "")
    return f"{f['check']} ({where})"


def _handlers(r: dict[str, Any], out: Console) -> None:
    a, f, vel, ex, rep, wf = r["audit"], r["fraud"], r["velocity"], r["export"], r["replica"], r["workflow"]
    out.rule("[bold]Handlers")
    out.print(f"[bold]audit[/]  {a['lines']} lines ({a['revisions']} revisions) in {a['file']}")
    rules = ", ".join(f"{rule} {n}" for rule, n in f["byRule"].items())
    out.print(
        f"[bold]fraud[/]  {f['alerts']} alerts ({rules}) -> SQS {f['sqsQueue']} "
        f"({f['sqsMessages']} messages) "
        f"and the in-process bus ({f['busAlerts']}); planted bursts to find: {f['plantedBursts']}",
        soft_wrap=True,
    )
    examples = _table("rule", "account", "score", "event time", "why")
    for e in f["examples"]:
        examples.add_row(
            e["rule"], e["accountId"], f"{e['score']:.2f}", e["eventTime"][11:19], e["explanation"]
        )
    out.print(examples)
    out.print(
        f"[bold]analytics[/]  transaction_velocity: {vel['windows']} one-minute windows -> "
        f"{vel['parquetFiles']} Parquet files in {vel['parquetDirectory']} and {vel['dynamodbItems']} items "
        f"in DynamoDB table {vel['dynamodbTable']}",
        soft_wrap=True,
    )
    windows = _table("window (UTC)", "transactions", "unique accounts", "total amount", "final", "= ledger")
    for row in vel["shown"]:
        windows.add_row(
            f"{row['windowStart'][:16].replace('T', ' ')} + 1 min",
            str(row["transactions"]),
            str(row["uniqueAccounts"]),
            row["totalAmount"],
            "yes" if row["final"] else "no",
            "[green]yes[/]" if row["matchesLedger"] else "[red]no[/]",
        )
    out.print(windows)
    parts = ", ".join(f"{p} ({n})" for p, n in list(ex["partitions"].items())[:4])
    more = f" and {len(ex['partitions']) - 4} more" if len(ex["partitions"]) > 4 else ""
    out.print(
        f"[bold]export[/]  {ex['rows']} rows in {ex['files']} Parquet files "
        f"({ex['bytes'] / 1024:.0f} KiB) under "
        f"{ex['directory']}, partitioned {ex['partitioning']}: {parts}{more}",
        soft_wrap=True,
    )
    verified = "[green]verified[/]" if rep["verified"] else "[red]NOT verified[/]"
    out.print(
        f"[bold]replication[/]  {rep['region']}:{rep['stream']}: {rep['revisions']} revisions "
        f"({rep['userRecords']} records, {rep['duplicates']} duplicates), "
        f"{rep['matched']} of {rep['expected']} match the source byte for byte, {verified} "
        f"(V2 passed {rep['checks'].get('V2', {}).get('passed', 0)}); "
        f"missing {rep['missing']}, extra {rep['extra']}, out of order {rep['outOfOrder']} (delivered late)",
        soft_wrap=True,
    )
    routes = _table("workflow route", "succeeded", "failed")
    for route, by_status in wf["routes"].items():
        routes.add_row(route, str(by_status.get("succeeded", 0)), str(by_status.get("failed", 0)))
    executions = ", ".join(f"{k} {n}" for k, n in wf["executions"].items())
    out.print(
        f"[bold]workflow[/]  the seed's event workflow, local interpreter: {executions}; "
        f"SNS topic {wf['snsTopic']}: {wf['snsMessages']} messages; DynamoDB table {wf['complianceTable']}: "
        f"{wf['complianceItems']} items",
        soft_wrap=True,
    )
    out.print(routes)


def _metrics(r: dict[str, Any], out: Console) -> None:
    m = r["metrics"]
    out.rule("[bold]Metrics")
    scrapes = m["scrapes"]
    during = [s for s in scrapes if s["phase"] == "during"]
    final = [s for s in scrapes if s["phase"] == "final"]
    columns = [f"during, at {s['atSeconds']:.1f} s" for s in during] + ["final"] * bool(final)
    table = _table("series", *columns)
    names = {k for s in scrapes for k in s["values"]}
    for name in sorted(names):
        table.add_row(name, *[f"{s['values'].get(name, 0):g}" for s in during + final])
    out.print(
        f"{m['url']} was scraped over HTTP {m['scrapesDuringRun']} times while the worker ran, "
        "and once at the end:"
    )
    out.print(table)
