"""The comparison behind ``qldbstream dr-check``: what a stream copy holds, and how two copies differ.

:func:`scan` reads one stream's Kinesis records into a :class:`Copy` (deaggregated, decoded,
verified, the delivery gate applied; records keyed by identity), :func:`compare` matches a target
copy against the source (missing, extra, mismatched, out of order, verification) and
:func:`render` writes the result for people. What is compared and why is described in
:mod:`qldbstream.cli.dr_check`, the sub-command that reads the streams.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import (
    BlockSummary,
    JournalRecord,
    RecordType,
    RevisionDetails,
    decode,
)
from qldbstream.core.dedupe import dedupe_key
from qldbstream.core.errors import DeaggregationError, PoisonRecordError
from qldbstream.core.gate import OWN_BLOCK_CHECKS, WholeInputGate
from qldbstream.core.records import KinesisRecord
from qldbstream.core.replica import is_masked_record, is_sealed_record
from qldbstream.core.scan import block_documents
from qldbstream.core.verify import Verifier

__all__ = ["Copy", "Entry", "compare", "render", "scan"]


@dataclass(slots=True)
class Entry:
    """The first copy of one journal record in a stream."""

    key: str
    digest: bytes
    document_id: str | None
    version: int | None
    where: str
    #: a revision's hash (what a masked copy is matched by), else None
    record_hash: bytes | None = None
    #: the masked form of a revision (see the module's doc)
    masked: bool = False

    def same_as(self, source: Entry) -> bool:
        """This copy of a record holds what ``source`` holds."""
        if self.masked:
            return self.record_hash is not None and self.record_hash == source.record_hash
        return self.digest == source.digest


@dataclass
class Copy:
    """What one stream (or the union of several) holds, for the selected records."""

    name: str
    entries: dict[str, Entry] = field(default_factory=dict)
    duplicates: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    out_of_order: list[dict[str, Any]] = field(default_factory=list)
    unverified: set[str] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    user_records: int = 0
    verifier: Verifier = field(default_factory=Verifier)
    #: what the delivery gate withholds (revisions of blocks that do not vouch for them)
    gate: WholeInputGate = field(default_factory=WholeInputGate)
    #: (documentId, shard) -> the highest version seen there so far
    high_versions: dict[tuple[str, str], int] = field(default_factory=dict)


def _selected(record: JournalRecord, types: frozenset[RecordType], sample: float) -> bool:
    if record.record_type not in types:
        return False
    if sample >= 1.0 or not isinstance(record, RevisionDetails):
        return True
    h = int.from_bytes(hashlib.sha256(record.document_id.encode()).digest()[:8], "big")
    return h / 2**64 < sample


def scan(
    copy: Copy,
    records: Iterable[KinesisRecord],
    *,
    types: frozenset[RecordType],
    sample: float = 1.0,
    label: str = "",
    open_sealed: Callable[[bytes], tuple[str, bytes]] | None = None,
) -> Copy:
    """Deaggregate, decode, verify and index ``records`` into ``copy``; ``open_sealed`` gives a
    sealed record's key and original bytes (:func:`qldbstream.core.replica.open_sealed_record`)."""
    for kr in records:
        try:
            users = deaggregate(kr)
        except DeaggregationError as exc:
            copy.failures.extend(f.as_dict() for f in copy.verifier.aggregate(kr.position, exc))
            continue
        for user in users:
            copy.user_records += 1
            sealed_key = None
            if is_sealed_record(user.data):
                try:
                    if open_sealed is None:
                        raise ValueError("a sealed record, and no way to open it")
                    sealed_key, data = open_sealed(user.data)
                except ValueError as exc:
                    where = user.position.as_dict()
                    copy.errors.append({"type": "SealedRecordError", "message": str(exc), "position": where})
                    continue
                user = dataclasses.replace(user, data=data)
            try:
                record = decode(user)
                failures = copy.verifier.verify(record)
            except PoisonRecordError as exc:
                pos = exc.position.as_dict() if exc.position else None
                copy.errors.append({"type": type(exc).__name__, "message": exc.message, "position": pos})
                continue
            key = dedupe_key(record)
            if sealed_key is not None and sealed_key != key:  # sealed as another record
                where = user.position.as_dict()
                message = f"sealed as {sealed_key}, holds {key}"
                copy.errors.append({"type": "SealedRecordError", "message": message, "position": where})
                continue
            if isinstance(record, BlockSummary):
                own = [f.check for f in failures if f.check in OWN_BLOCK_CHECKS]
                try:
                    tables = block_documents(record) if record.transaction_info_hash is not None else None
                except PoisonRecordError:
                    tables, own = None, [*own, "V5"]
                copy.gate.block(record, own, tables)
            elif isinstance(record, RevisionDetails):
                copy.gate.revision(key, record)
            if not _selected(record, types, sample):
                continue
            if failures:
                copy.failures.extend(f.as_dict() for f in failures)
                copy.unverified.add(key)
            _index(copy, record, key, f"{label}{kr.shard_id or ''}")
    return copy


def _index(copy: Copy, record: JournalRecord, key: str, shard: str) -> None:
    digest = hashlib.sha256(record.raw).digest()
    doc = record.document_id if isinstance(record, RevisionDetails) else None
    version = record.version if isinstance(record, RevisionDetails) else None
    record_hash = record.hash if isinstance(record, RevisionDetails) else None
    seen = copy.entries.get(key)
    if seen is not None:
        copy.duplicates += 1
        if seen.digest != digest:
            copy.conflicts.append({"key": key, "documentId": doc, "version": version, "shard": shard})
        return
    copy.entries[key] = Entry(key, digest, doc, version, shard, record_hash, is_masked_record(record))
    if doc is not None and version is not None:
        high = copy.high_versions.get((doc, shard), -1)
        if version < high:
            copy.out_of_order.append({"documentId": doc, "version": version, "after": high, "shard": shard})
        copy.high_versions[(doc, shard)] = max(high, version)


def _subject(e: Entry) -> dict[str, Any]:
    return {"key": e.key, "documentId": e.document_id, "version": e.version, "shard": e.where}


def compare(source: Copy, target: Copy, limit: int = 100) -> dict[str, Any]:
    """The differences between a source copy and a target copy, as a JSON-ready dict."""
    withheld = source.gate.rejected()
    expected = {k: e for k, e in source.entries.items() if k not in source.unverified and k not in withheld}
    missing = [_subject(e) for k, e in expected.items() if k not in target.entries]
    extra = [_subject(e) for k, e in target.entries.items() if k not in source.entries]
    mismatched = [
        _subject(e)
        for k, e in target.entries.items()
        if k in source.entries and not e.same_as(source.entries[k])
    ]
    mismatched += target.conflicts
    matched = sum(1 for k, e in target.entries.items() if k in expected and e.same_as(expected[k]))
    counts = {
        "missing": len(missing),
        "extra": len(extra),
        "mismatched": len(mismatched),
        "outOfOrder": len(target.out_of_order),
        "verificationFailures": len(target.failures),
        "unreadable": len(target.errors),
    }
    return {
        "target": target.name,
        "ok": not any(counts.values()),
        "userRecords": target.user_records,
        "matched": matched,
        "expected": len(expected),
        "duplicates": target.duplicates,
        "counts": counts,
        "missing": missing[:limit],
        "extra": extra[:limit],
        "mismatched": mismatched[:limit],
        "outOfOrder": target.out_of_order[:limit],
        "verificationFailures": target.failures[:limit],
        "unreadable": target.errors[:limit],
        "checks": target.verifier.tally.as_dict(),
    }


def render(report: dict[str, Any]) -> str:
    """The report as text for people."""
    src = report["source"]
    lines = [
        f"source {src['stream']}: {src['selected']} records selected of {src['userRecords']} user records"
        + (
            f", {len(src['unverified'])} failing verification (not expected in copies)"
            if src["unverified"]
            else ""
        )
    ]
    for t in report["targets"]:
        verdict = "MATCHES" if t["ok"] else "DIFFERS"
        lines.append(
            f"{verdict} {t['target']}: {t['matched']}/{t['expected']} matched, {t['duplicates']} duplicates"
        )
        for kind, items in (
            ("missing", t["missing"]),
            ("extra", t["extra"]),
            ("mismatched", t["mismatched"]),
            ("outOfOrder", t["outOfOrder"]),
        ):
            if t["counts"][kind]:
                lines.append(f"  {kind}: {t['counts'][kind]}")
                lines.extend(f"    {_describe(item)}" for item in items[:20])
        for kind in ("verificationFailures", "unreadable"):
            if t["counts"][kind]:
                lines.append(f"  {kind}: {t['counts'][kind]} (see --json)")
    return "\n".join(lines) + "\n"


def _describe(item: dict[str, Any]) -> str:
    if item.get("documentId") is None:
        return f"{item.get('key')} on {item.get('shard')}"
    text = f"document {item['documentId']} v{item['version']}"
    if "after" in item:
        text += f" after v{item['after']}"
    return f"{text} on {item['shard']}"
