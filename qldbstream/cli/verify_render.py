"""``qldbstream verify``'s human-readable output: a verification report drawn with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from qldbstream.core.report import CHECK_NAMES, VerificationReport
from qldbstream.core.verify import CHECKS

__all__ = ["render_report"]


def render_report(report: VerificationReport, console: Console) -> None:
    """Print a readable summary with rich (per record type, per check, failures, gaps)."""

    verdict = "[bold green]ALL VERIFIED[/]" if report.ok else "[bold red]VERIFICATION FAILED[/]"
    types = ", ".join(f"{n} {t}" for t, n in sorted(report.record_types.items()))
    console.print(
        f"{verdict}  {report.records} user records in {report.kinesis_records} Kinesis records: {types}",
        soft_wrap=True,
    )
    table = Table(title="Checks", title_justify="left")
    for col in ("check", "what", "passed", "failed", "skipped"):
        table.add_column(col, justify="right" if col in ("passed", "failed", "skipped") else "left")
    for check in CHECKS:
        passed, failed, skipped = report.verifier.tally.counts[check]
        if passed or failed or skipped:
            style = "red" if failed else ""
            table.add_row(check, CHECK_NAMES[check], str(passed), str(failed), str(skipped), style=style)
    console.print(table)
    if report.failures:
        console.print(f"[bold red]Failures ({len(report.failures) + report.omitted_failures}):[/]")
        for f in report.failures[:50]:
            where = f.position.describe()
            subject = f" document {f.document_id}" if f.document_id else ""
            subject += f" v{f.version}" if f.version is not None else ""
            block = f" block {f.block_sequence_no}" if f.block_sequence_no is not None else ""
            console.print(
                f"  {f.check}{subject}{block} at {where}: {f.message}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            if f.expected is not None:
                console.print(
                    f"      expected {f.expected}\n      actual   {f.actual}",
                    markup=False,
                    soft_wrap=True,
                )
        if len(report.failures) > 50:
            console.print(f"  … {len(report.failures) - 50 + report.omitted_failures} more (use --json)")
    if report.errors:
        console.print(f"[bold red]Unreadable records ({len(report.errors)}):[/]")
        for e in report.errors[:50]:
            pos = e["position"] or {}
            console.print(
                f"  {e['type']} at {_where(pos)}: {e['message']}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if report.gaps:
        console.print(f"[yellow]Incomplete ({len(report.gaps)}): not failures; the input may be partial[/]")
        for g in report.gaps[:20]:
            console.print("  " + _gap_text(g), markup=False, soft_wrap=True)
    for p in report.proofs:
        mark = (
            "[green]passed[/]" if p["passed"] else "[red]FAILED[/]" if p["passed"] is False else "not checked"
        )
        console.print(
            f"V10 {p['source']}: {mark} - the proof folds to {p['computed']}"
            + (f", the digest is {p['digest']}" if p.get("digest") else "")
            + (f" ({p['message']})" if p.get("message") else ""),
            soft_wrap=True,
        )
    _render_findings(report, console)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


def _render_findings(report: VerificationReport, console: Console) -> None:
    """Per archived input (block, revision, receipt): what its checks established, what they could not."""
    for f in report.findings:
        used = f" (used the object {f['usedObject']!r})" if f["usedObject"] else ""
        console.print(f"[bold]{f['shape']}[/] {f['source']}{used}:", soft_wrap=True, highlight=False)
        for line in f["established"]:
            mark = "[red]✗[/]" if "FAILED" in line else "[green]✓[/]"
            console.print(f"  {mark} {line}", soft_wrap=True, highlight=False)
        for line in f["notEstablished"]:
            console.print(f"  [yellow]-[/] {line}", soft_wrap=True, highlight=False)


def _where(pos: dict[str, Any]) -> str:
    parts = [str(pos.get("source"))]
    if pos.get("shardId"):
        parts.append(f"shard {pos['shardId']}")
    if pos.get("sequenceNumber"):
        parts.append(f"sequence number {pos['sequenceNumber']}")
    return ", ".join(parts)


def _gap_text(g: dict[str, Any]) -> str:
    if g["kind"] == "missing-blocks":
        return f"strand {g['strandId']}: blocks {g['fromSequenceNo']}..{g['toSequenceNo']} not received"
    if g["kind"] == "missing-revision":
        return (
            f"block {g['blockSequenceNo']}: revision of document {g['documentId']} "
            f"({g['revisionHash']}) not received"
        )
    return (
        f"revision of document {g['documentId']} in block {g['blockSequenceNo']}: "
        "its block summary not received"
    )
