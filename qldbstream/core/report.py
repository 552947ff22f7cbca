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

__all__ = ["UNADDRESSED", "Subject", "VerificationReport", "verify_records"]

#: ``blockAddress.strandId`` given to a revision saved without its block address (a ``history()``
#: result, a receipt): V2 needs no address, so such a revision is verified without V3.
UNADDRESSED = "(no blockAddress)"

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
class Subject:
    """One thing an archive file held (a block, revisions, a receipt) and what its checks can tell.

    ``source`` prefixes the positions of its records and is the source of its proof (V10), so
    :meth:`VerificationReport.finish` can say, per subject, what was established and what was not.
    """

    source: str
    shape: str
    #: the object inside an application's own JSON that held it (``None``: the file itself)
    used: str | None = None
    #: revisions whose data (or dataHash) and metadata came with their hash: V2 applies
    revisions: int = 0
    #: revisions that came without blockAddress
    unaddressed: int = 0
    #: a hash without the data it covers (a receipt that stores only the revision hash)
    hash_only: bool = False
    block: bool = False
    has_proof: bool = False
    #: values rebuilt as Ion from JSON (types JSON cannot hold may be lost)
    from_json: bool = False


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
    subjects: list[Subject] = field(default_factory=list)
    #: per subject, what its checks established and what they could not (set by :meth:`finish`)
    findings: list[dict[str, Any]] = field(default_factory=list)
    #: the first revision/block hashes seen: the leaf for a V10 proof given on the command line
    leaves: list[tuple[bytes, BlockAddress | None]] = field(default_factory=list)
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
        self.findings = [self._finding(s) for s in self.subjects]

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
            "inputs": self.findings,
        }

    def _finding(self, subject: Subject) -> dict[str, Any]:
        """What the checks established for ``subject``, and what they could not."""
        own = subject.source + " "
        failed = {
            f.check
            for f in self.failures
            if f.position.source == subject.source or f.position.source.startswith(own)
        }
        proof = next((p for p in self.proofs if p["source"] == subject.source), None)
        yes: list[str] = []
        no: list[str] = []
        if subject.revisions:
            if failed & {"V2", "V2b"}:
                yes.append("V2 FAILED: a revision's data or metadata is not what its hash covers")
            else:
                yes.append(
                    f"V2: the data and metadata of {subject.revisions} revision(s) are what their hash covers"
                )
        if subject.unaddressed:
            no.append(
                f"{subject.unaddressed} revision(s) without blockAddress: which block holds them (V3) is "
                "not known; V2 does not need it"
            )
        if subject.block:
            block_checks = sorted(failed & {"V3", "V4", "V5", "V6", "V7", "V8"})
            if block_checks:
                yes.append(
                    f"{', '.join(block_checks)} FAILED: the block's contents do not hash to its blockHash"
                )
            else:
                yes.append(
                    "V4-V8: the block's revisions, transactionInfo and entries hash up to its blockHash"
                )
        if subject.hash_only:
            no.append(
                "no document came with the hash: V10 can anchor only the hash; nothing here ties a "
                "document's contents to it (V2 needs the revision's data and metadata)"
            )
        if proof is None:
            no.append(
                "no proof: nothing ties these hashes to a ledger digest (V10 needs GetRevision/GetBlock)"
            )
        elif proof["passed"] is None:
            no.append("V10 not checked: no digest given (pass --digest B64 or a saved GetDigest output)")
        elif proof["passed"]:
            anchored = "the block hash" if subject.block else "the revision hash"
            yes.append(f"V10: {anchored} is in the journal the digest {proof['digest']} covers")
            if subject.revisions and not failed & {"V2", "V2b"}:
                yes.append("V2 + V10: this data is what the ledger held, as of that digest")
            no.append(
                "V10 is only as good as the digest: it must come from QLDB (GetDigest) by a channel you trust"
            )
        else:
            yes.append(f"V10 FAILED: {proof['message']}")
        if subject.from_json:
            no.append(
                "read from JSON and rebuilt as Ion: a V2/V5 failure may be an Ion type JSON lost "
                "(decimal, symbol, blob) rather than tampering"
            )
        return {
            "source": subject.source,
            "shape": subject.shape,
            "usedObject": subject.used,
            "established": yes,
            "notEstablished": no,
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
                address = record.block_address
                report.leaves.append((leaf, None if address.strand_id == UNADDRESSED else address))
            try:
                if isinstance(record, RevisionDetails) and record.block_address.strand_id == UNADDRESSED:
                    report.add_failures(_unaddressed(verifier, record))
                else:
                    report.add_failures(verifier.verify(record))
            except PoisonRecordError as exc:
                report.add_error(exc)
        if on_record is not None:
            on_record(len(users))
    return report


def _unaddressed(verifier: Verifier, record: RevisionDetails) -> list[Failure]:
    """V2 for a revision without a block address, by a Verifier of its own (no V3 state to join)."""
    scratch = Verifier()
    failures = scratch.verify(record)
    for check in ("V2", "V2b"):
        for i, n in enumerate(scratch.tally.counts[check]):
            verifier.tally.counts[check][i] += n
    return [f for f in failures if f.check in ("V2", "V2b")]


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
