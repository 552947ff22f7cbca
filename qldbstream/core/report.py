"""Run verification over a sequence of Kinesis records and report the results.

:func:`verify_records` is the loop ``qldbstream verify`` and the demo use: deaggregate →
decode → verify, record by record, never holding more than one Kinesis record's user records.
A record that cannot be read becomes an error entry with its position; the rest goes on.

:class:`VerificationReport` renders the outcome as text (for people) or as the JSON document
``qldbstream verify --json`` prints::

    {"records": N, "checks": {"V2": {"passed": n, "failed": m}, ...},
     "failures": [{"check", "position": {...}, "documentId", "version", "blockSequenceNo",
                   "expected", "actual", "message"}], "gaps": [...], ...}
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import BlockAddress, BlockSummary, RevisionDetails, decode
from qldbstream.core.errors import DeaggregationError, PoisonRecordError
from qldbstream.core.records import KinesisRecord
from qldbstream.core.verify import INFERRED_CHECKS, Failure, Verifier

__all__ = ["VerificationReport", "verify_records"]

CHECK_NAMES = {
    "V1": "KPL aggregate magic + MD5",
    "V2": "revision hash",
    "V2b": "deleted revision hash (inferred rule)",
    "V3": "block summary ↔ revision details",
    "V4": "revisions Merkle root in entriesHashList",
    "V5": "H(transactionInfo) in entriesHashList",
    "V6": "statement digests",
    "V7": "entriesHash = Merkle(entriesHashList)",
    "V8": "blockHash = dot(entriesHash, previousBlockHash)",
    "V9": "hash chain between blocks",
    "V10": "proof folds to the ledger digest",
}


@dataclass
class VerificationReport:
    kinesis_records: int = 0
    records: int = 0
    record_types: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    proofs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the first revision/block hashes seen: the leaf for a V10 proof given on the command line
    leaves: list[tuple[bytes, BlockAddress]] = field(default_factory=list)
    max_failures: int = 10_000
    omitted_failures: int = 0
    verifier: Verifier = field(default_factory=Verifier)

    def add_error(self, error: PoisonRecordError) -> None:
        pos = error.position
        self.errors.append(
            {
                "type": type(error).__name__,
                "message": error.message,
                "position": pos.as_dict() if pos is not None else None,
            }
        )

    def add_failures(self, failures: list[Failure]) -> None:
        room = self.max_failures - len(self.failures)
        self.failures.extend(failures[:room])
        self.omitted_failures += max(0, len(failures) - max(room, 0))

    def finish(self) -> None:
        """Collect what only the end of the input can tell: chain gaps and unmatched pairs."""
        self.gaps = [g.as_dict() for g in self.verifier.chain.gaps()]
        self.gaps.extend(u.as_dict() for u in self.verifier.crossref.unmatched())
        counts = self.verifier.tally.counts
        if counts["V2b"][0] or counts["V2b"][1]:
            self.notes.append(
                "V2b: deleted revisions are checked against H(metadata), a rule inferred from the QLDB "
                "drivers' empty-hash convention; no real QLDB sample confirms it (qldb-stream-format.md §5)."
            )

    @property
    def ok(self) -> bool:
        return not self.errors and self.verifier.tally.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "kinesisRecords": self.kinesis_records,
            "recordTypes": dict(sorted(self.record_types.items())),
            "checks": self.verifier.tally.as_dict(),
            "inferredChecks": sorted(INFERRED_CHECKS),
            "failures": [f.as_dict() for f in self.failures],
            "omittedFailures": self.omitted_failures,
            "errors": self.errors,
            "gaps": self.gaps,
            "proofs": self.proofs,
            "notes": self.notes,
        }


def verify_records(
    items: Iterable[KinesisRecord | PoisonRecordError],
    report: VerificationReport,
    on_record: Callable[[int], None] | None = None,
) -> VerificationReport:
    """Deaggregate, decode and verify every record; collect everything in ``report``."""
    verifier = report.verifier
    for item in items:
        if isinstance(item, PoisonRecordError):
            report.add_error(item)
            continue
        report.kinesis_records += 1
        aggregated = item.data[:4] == KPL_MAGIC
        try:
            users = deaggregate(item)
        except DeaggregationError as exc:  # counted and reported as a V1 failure
            report.add_failures(verifier.aggregate(item.position, exc))
            continue
        if aggregated:
            verifier.aggregate(item.position, None)
        for user in users:
            report.records += 1
            try:
                record = decode(user)
            except PoisonRecordError as exc:
                report.add_error(exc)
                continue
            report.record_types[record.record_type.value] += 1
            if len(report.leaves) < 2 and isinstance(record, RevisionDetails | BlockSummary):
                leaf = record.hash if isinstance(record, RevisionDetails) else record.block_hash
                report.leaves.append((leaf, record.block_address))
            try:
                report.add_failures(verifier.verify(record))
            except PoisonRecordError as exc:
                report.add_error(exc)
        if on_record is not None:
            on_record(len(users))
    return report


def proof_result(
    source: str, passed: bool | None, computed: bytes, digest: bytes | None, message: str
) -> dict[str, Any]:
    return {
        "source": source,
        "passed": passed,
        "computed": base64.b64encode(computed).decode(),
        "digest": base64.b64encode(digest).decode() if digest else None,
        "message": message,
    }
