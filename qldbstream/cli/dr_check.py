"""``qldbstream dr-check``: does a disaster-recovery copy of a QLDB stream hold what the source holds?

Both streams are read (every shard, parents first, until caught up) and every user record is
deaggregated, decoded and verified with the same checks as ``qldbstream verify``. Records are
matched by their identity - ``(documentId, version)`` for revisions, ``(strandId, sequenceNo)``
for block summaries - and compared byte for byte. Reported per target:

* **missing** - verified at the source, absent from the target;
* **extra** - in the target, not in the source (a source trimmed by retention shows these too);
* **mismatched** - present in both with different bytes;
* **out of order** - on one target shard, a document's version first appears after a higher one;
* **verification** - the target's own records failing a check, or unreadable.

A copy written with masking on holds revisions in the *masked form* (:mod:`qldbstream.core.replica`:
QLDB's redacted form plus the masked document): such a revision matches its source when its
revision hash is the source's (the copy's V2 proves its ``dataHash`` and metadata). A *sealed* copy
(``raw_copy_kms_key_id``) is opened with KMS (``kms:Decrypt``; ``--kms-endpoint-url``) and then
compared byte for byte like a plain one.

Duplicates (the same record more than once, same bytes) are counted, not failures: delivery is at
least once. Source records failing verification are expected *not* to be replicated and are
listed apart. ``--sample`` compares a deterministic fraction of the documents (chosen by a hash of
the document id, so both sides agree); ``--union`` treats several targets as one copy (the
replication handler's failover mode spreads one copy over its targets).

Exit status: 0 the copies match, 1 a difference or verification failure, 2 an input cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
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
from qldbstream.core.errors import DeaggregationError, InputError, PoisonRecordError
from qldbstream.core.gate import OWN_BLOCK_CHECKS, WholeInputGate
from qldbstream.core.records import KinesisRecord
from qldbstream.core.replica import is_masked_record, is_sealed_record, open_sealed_record
from qldbstream.core.scan import block_documents
from qldbstream.core.verify import Verifier

__all__ = ["Copy", "StreamSpec", "compare", "parse_stream_spec", "register", "run", "scan"]

EXAMPLES = """\
examples:
  qldbstream dr-check --source ledger-stream --target us-west-2:ledger-dr --target eu-west-1:ledger-dr
  qldbstream dr-check --source s --endpoint-url http://127.0.0.1:4568 --target west-copy --json
  qldbstream dr-check --source s --target us-west-2:a --target eu-west-1:b --union --sample 0.1

A target is [REGION:]STREAM[@ENDPOINT_URL]; without a region or endpoint, --region and
--endpoint-url apply. exit status: 0 the copies match, 1 they differ, 2 a stream cannot be read.
"""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    stream: str
    region: str | None = None
    endpoint: str | None = None

    def describe(self) -> str:
        return ":".join(filter(None, [self.region, self.stream])) + (
            f"@{self.endpoint}" if self.endpoint else ""
        )


def parse_stream_spec(text: str, region: str | None = None, endpoint: str | None = None) -> StreamSpec:
    """``[REGION:]STREAM[@ENDPOINT]`` (stream names hold neither ``:`` nor ``@``)."""
    left, _, at = text.partition("@")
    own_region, _, stream = left.rpartition(":")
    if not stream:
        raise InputError(f"target {text!r}: expected [REGION:]STREAM[@ENDPOINT_URL]")
    return StreamSpec(stream, own_region or region, at or endpoint)


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


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dr-check",
        help="compare a disaster-recovery copy of a stream with its source",
        description="Read a source stream and its replicated copies, match records by identity and "
        "bytes, verify the copies, and report missing, extra, mismatched and out-of-order records.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, metavar="[REGION:]STREAM[@URL]", help="the source stream")
    p.add_argument(
        "--target", action="append", required=True, metavar="[REGION:]STREAM[@URL]", help="a copy (repeat)"
    )
    p.add_argument("--union", action="store_true", help="the targets together form one copy (failover)")
    p.add_argument("--region", metavar="REGION", help="default region for both sides")
    p.add_argument("--endpoint-url", metavar="URL", help="default Kinesis endpoint for both sides")
    p.add_argument(
        "--records",
        default="revision_details",
        help="record types to compare: revision_details, block_summary, control (comma-separated)",
    )
    p.add_argument("--sample", type=float, default=1.0, metavar="FRACTION", help="fraction of documents")
    p.add_argument("--from", dest="start", metavar="TIMESTAMP", help="read both from this time (ISO 8601)")
    p.add_argument("--max-differences", type=int, default=100, metavar="N", help="list at most N of each")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between polls of a shard that is caught up (default 1)",
    )
    p.add_argument(
        "--kms-endpoint-url",
        metavar="URL",
        help="KMS endpoint to open sealed copies (raw_copy_kms_key_id); default: the stream's endpoint",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on standard output")
    p.set_defaults(handler=run)


def _types(text: str) -> frozenset[RecordType]:
    try:
        types = frozenset(RecordType(t.strip().upper()) for t in text.split(",") if t.strip())
    except ValueError:
        raise InputError(f"--records {text!r}: expected revision_details, block_summary, control") from None
    if not types:
        raise InputError("--records names no record type")
    return types


def _read(spec: StreamSpec, start: str | None, poll_interval: float = 1.0) -> Iterable[KinesisRecord]:
    from qldbstream.io.clients import aws_client
    from qldbstream.io.kinesis_reader import TRIM_HORIZON, StartPosition, read_stream

    position = TRIM_HORIZON
    if start:
        try:
            position = StartPosition.at_timestamp(datetime.fromisoformat(start.replace("Z", "+00:00")))
        except ValueError:
            raise InputError(f"--from {start!r} is not an ISO 8601 timestamp with a time zone") from None
    client = aws_client("kinesis", region_name=spec.region, endpoint_url=spec.endpoint)
    return read_stream(client, spec.stream, start=position, poll_interval=poll_interval)


def _opener(spec: StreamSpec, kms_endpoint: str | None) -> Callable[[bytes], tuple[str, bytes]]:
    """Opens a sealed record with KMS in the stream's region (the client is made on first use)."""
    sealers: list[Any] = []

    def open_sealed(data: bytes) -> tuple[str, bytes]:
        if not sealers:
            from qldbstream.io.clients import aws_client
            from qldbstream.io.sealers import KmsSealer

            client = aws_client("kms", region_name=spec.region, endpoint_url=kms_endpoint or spec.endpoint)
            sealers.append(KmsSealer(client, ""))
        return open_sealed_record(data, sealers[0])

    return open_sealed


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.sample <= 1.0:
        raise InputError(f"--sample must be in (0, 1], not {args.sample}")
    types = _types(args.records)
    source_spec = parse_stream_spec(args.source, args.region, args.endpoint_url)
    specs = [parse_stream_spec(t, args.region, args.endpoint_url) for t in args.target]

    def read(spec: StreamSpec, copy: Copy, label: str = "") -> Copy:
        records = _read(spec, args.start, args.poll_interval)
        opener = _opener(spec, getattr(args, "kms_endpoint_url", None))
        return scan(copy, records, types=types, sample=args.sample, label=label, open_sealed=opener)

    source = read(source_spec, Copy(source_spec.describe()))
    if args.union:
        union = Copy(" + ".join(s.describe() for s in specs))
        for spec in specs:
            read(spec, union, f"{spec.stream}/")
        copies = [union]
    else:
        copies = [read(s, Copy(s.describe())) for s in specs]
    results = [compare(source, c, args.max_differences) for c in copies]
    report = {
        "ok": all(r["ok"] for r in results),
        "source": {
            "stream": source.name,
            "userRecords": source.user_records,
            "selected": len(source.entries),
            "unverified": sorted(source.unverified | set(source.gate.rejected()))[: args.max_differences],
            "duplicates": source.duplicates,
        },
        "recordTypes": sorted(t.value for t in types),
        "sample": args.sample,
        "targets": results,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(report))
    return 0 if report["ok"] else 1


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
