"""``qldbstream verify`` over a journal export: streamed block by block, problems named, V10 at the tip.

:func:`export_records` walks an export (:mod:`qldbstream.io.journal_export`) and yields each
block's stream records to :func:`qldbstream.core.report.verify_records`, one block at a time. It
keeps per export only counters, the hash of the digest's tip block and a few examples - the
verifier's own state (chain runs per gap, crossref entries for the blocks in flight) does the rest.

* A problem with the export itself (a listed object missing, objects out of order, overlapping or
  missing ranges, a block whose address disagrees with its object's name, an unreadable object)
  becomes an error entry ``ExportProblem/<kind>`` with the object's key: the report is not ok.
* **JSON exports.** QLDB down-converts Ion to JSON; a revision's ``data`` holding a number or a
  string may have lost its Ion type (decimal, float, timestamp, symbol, blob, clob all arrive as
  JSON numbers or strings), so the Ion hash recomputed from JSON cannot be trusted to match. A
  V2 failure of such a revision is counted as *skipped*, listed as *not verifiable from JSON* with
  that reason, not as a failure. Everything else survives exactly (hashes as base64, the known
  timestamps, strings of metadata, transactionInfo): V2 of revisions whose hash matches, of
  redacted and deleted revisions, and V3-V9 are verified as for Ion.
* **V10.** With ``--digest`` (and its tip) and ``--proof`` (a GetBlock proof of the tip block),
  the leaf is the export's own block at the digest's tip address; with V9 unbroken from the
  export's first block to the tip, every block up to the tip is anchored to the digest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from qldbstream.core.decode import BlockAddress
from qldbstream.core.records import KinesisRecord
from qldbstream.core.report import VerificationReport
from qldbstream.io.journal_export import ExportProblem, JournalExport, open_export

__all__ = ["ExportRun", "anchored_note", "export_leaf", "export_records", "finish_export"]

#: not-verifiable-from-JSON revisions listed by name (the rest are counted)
_EXAMPLES = 5
_JSON_REASON = (
    "its data holds numbers or strings, and JSON keeps no Ion type for them (a decimal, float or int "
    "is a JSON number; a timestamp, symbol, blob or clob a JSON string), so the hash recomputed from "
    "the JSON cannot be compared with the one QLDB computed over the Ion"
)


@dataclass
class ExportRun:
    """What one export's walk leaves behind for the report (bounded: counters and a few examples)."""

    export: JournalExport
    tip: BlockAddress | None = None
    tip_hash: bytes | None = None
    blocks: int = 0
    objects: set[str] = field(default_factory=set)
    problems: int = 0
    unverifiable: int = 0
    examples: list[str] = field(default_factory=list)
    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)


def export_records(
    location: str, report: VerificationReport, runs: list[ExportRun], tip: BlockAddress | None = None
) -> Iterator[KinesisRecord]:
    """The export's blocks as stream records, one block at a time; problems go to ``report``."""
    run = ExportRun(open_export(location), tip)
    runs.append(run)
    pending: tuple[Any, int] | None = None  # (the previous block, len(report.failures) before it)
    for item in run.export.items():
        if pending is not None:
            _json_failures(run, report, *pending)
            pending = None
        if isinstance(item, ExportProblem):
            run.problems += 1
            report.errors.append(
                {
                    "type": f"ExportProblem/{item.kind}",
                    "message": item.message,
                    "position": {"source": item.key or location, "sequenceNo": item.sequence_no},
                }
            )
            continue
        run.blocks += 1
        run.objects.add(item.object_key)
        run.first.setdefault(item.strand_id, item.sequence_no)
        run.last[item.strand_id] = item.sequence_no
        if tip is not None and (item.strand_id, item.sequence_no) == (tip.strand_id, tip.sequence_no):
            run.tip_hash = bytes(item.value["blockHash"])
        if item.from_json:
            pending = (item.value, len(report.failures))
        yield from item.records
    if pending is not None:
        _json_failures(run, report, *pending)


def _json_failures(run: ExportRun, report: VerificationReport, block: Mapping[str, Any], since: int) -> None:
    """V2 failures of a JSON block's revisions whose data may have lost Ion types: not verifiable."""
    lossy = {
        (str(r["metadata"]["id"]), int(r["metadata"]["version"]))
        for r in block.get("revisions") or []
        if isinstance(r, Mapping) and isinstance(r.get("metadata"), Mapping) and _typeless(r.get("data"))
    }
    if not lossy:
        return
    kept = report.failures[:since]
    tally = report.verifier.tally.counts
    for f in report.failures[since:]:
        if f.check in ("V2", "V2b") and (f.document_id, f.version) in lossy:
            tally[f.check][1] -= 1
            tally[f.check][2] += 1
            run.unverifiable += 1
            if len(run.examples) < _EXAMPLES:
                run.examples.append(f"{f.document_id} version {f.version} ({f.position.source})")
        else:
            kept.append(f)
    report.failures[:] = kept


def _typeless(value: Any) -> bool:
    """A JSON value holding a number or a string (whose Ion type JSON did not keep)."""
    if isinstance(value, Mapping):
        return any(_typeless(v) for v in value.values())
    if isinstance(value, list):
        return any(_typeless(v) for v in value)
    return isinstance(value, str | int | float | Decimal) and not isinstance(value, bool)


def finish_export(run: ExportRun, report: VerificationReport) -> None:
    """Notes on what the walk established; called once the verifier has seen every block."""
    export = run.export
    strands = ", ".join(f"{s} blocks {run.first.get(s)}-{run.last.get(s)}" for s in export.strand_ids)
    report.notes.append(
        f"journal export {export.export_id} ({export.output_format}) at {export.location}: "
        f"{len(run.objects)} data objects, {run.blocks} blocks ({strands or 'no strand completed'}); "
        + (
            f"{run.problems} problem(s) with the export itself (see the errors)"
            if run.problems
            else "every object the completed manifest lists is present, in order, with contiguous ranges"
        )
    )
    if run.unverifiable:
        listed = "; ".join(run.examples) + (" ..." if run.unverifiable > len(run.examples) else "")
        report.notes.append(
            f"not verifiable from JSON: V2 of {run.unverifiable} revision(s) ({listed}) - {_JSON_REASON}. "
            "They are counted as skipped, not failed; an ION_TEXT or ION_BINARY export verifies them."
        )
    if run.tip is not None and run.tip_hash is None:
        report.notes.append(
            f"the digest's tip {{strandId: {run.tip.strand_id}, sequenceNo: {run.tip.sequence_no}}} "
            "is not in the export: V10 cannot anchor it"
        )


def export_leaf(runs: list[ExportRun]) -> tuple[bytes, BlockAddress] | None:
    """The digest tip's block hash, read from an export (the leaf of a GetBlock proof)."""
    for run in runs:
        if run.tip is not None and run.tip_hash is not None:
            return run.tip_hash, run.tip
    return None


def anchored_note(run: ExportRun, report: VerificationReport) -> None:
    """After V10 passed at the tip: what the unbroken chain extends the anchor to."""
    if run.tip is None or run.tip_hash is None:
        return
    strand = run.tip.strand_id
    breaks = any(f.check == "V9" for f in report.failures)
    gaps = any(g.get("strandId") == strand for g in report.gaps)
    if breaks or gaps or run.problems:
        report.notes.append(
            "V10 anchors the tip block only: the chain below it is broken or has gaps, so the blocks "
            "before the break are not tied to the digest"
        )
        return
    report.notes.append(
        f"V9 + V10: every block of strand {strand} from {run.first.get(strand)} to the tip "
        f"{run.tip.sequence_no} is tied to the digest (each previousBlockHash chains into the tip's "
        "blockHash, which the proof folds to the digest)"
        + (
            f"; blocks after the tip ({run.tip.sequence_no + 1}-{run.last[strand]}) are not covered"
            if run.last.get(strand, 0) > run.tip.sequence_no
            else ""
        )
    )
