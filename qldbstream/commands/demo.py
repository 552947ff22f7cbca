"""``qldbstream demo``: the whole slice on an embedded local AWS, with a report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qldbstream.demo import DemoOptions, run_demo

__all__ = ["register", "run"]

EXAMPLES = """\
The demo starts moto in this process on 127.0.0.1 (no AWS account, no Docker), creates a
Kinesis stream, simulates a small bank's QLDB ledger into it (with duplicates, reordering and
one tampered revision), reads every shard back, verifies every record and prints the report.
It exits 0 when verification finds exactly the planted tampering.

examples:
  qldbstream demo
  qldbstream demo --transactions 2000 --shards 8 --seed 7
  qldbstream demo --tamper 'block=40:transactionInfo.statements[0].statement' --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the simulated ledger -> Kinesis -> verify slice on an embedded local AWS",
        description="End-to-end demo on an embedded local AWS (moto on 127.0.0.1).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DemoOptions()
    p.add_argument("--seed", type=int, default=d.seed, help=f"simulator seed (default {d.seed})")
    p.add_argument("--transactions", type=int, default=d.transactions, help="ledger transactions to simulate")
    p.add_argument("--shards", type=int, default=d.shards, help="Kinesis shards")
    p.add_argument(
        "--duplicates", type=float, default=d.duplicate_rate, help="share of records delivered twice"
    )
    p.add_argument("--reorder", type=int, default=d.reorder_window, help="reordering window (records)")
    p.add_argument(
        "--tamper", default=d.tamper, help="what to tamper with (see 'qldbstream simulate --help')"
    )
    p.add_argument("--json", action="store_true", help="print the verification report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    options = DemoOptions(
        seed=args.seed,
        transactions=args.transactions,
        shards=args.shards,
        duplicate_rate=args.duplicates,
        reorder_window=args.reorder,
        tamper=args.tamper,
    )
    out = Console(stderr=args.json)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        result = run_demo(options, progress)
    s = result.summary
    out.print(
        f"[bold]Simulated ledger[/] {s['qldbStreamArn']}: {s['blocks']} blocks, {s['revisions']} revisions "
        f"({s['deletes']} deletes, {s['redactions']} redactions), {s['kinesisRecords']} Kinesis records "
        f"({s['duplicates']} duplicates) over {s['shards']} shards at {result.endpoint}",
        soft_wrap=True,
    )
    if args.json:
        json.dump(result.report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        result.report.render(out)
    planted = ", ".join(f"{c} (block {b}{', document ' + d if d else ''})" for c, b, d in result.expected)
    if result.matches:
        out.print(f"[bold green]The planted tampering was caught, and nothing else was flagged:[/] {planted}")
        return 0
    out.print(f"[bold red]Verification did not find exactly what was planted.[/] planted: {planted}")
    out.print(f"found: {result.found}", markup=False)
    return 1
