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

The comparison itself is :mod:`qldbstream.cli.dr_compare`; ``Copy``, ``compare`` and ``scan`` stay
re-exported here, where the demo and the replication tests have always taken them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qldbstream.cli.dr_compare import Copy, compare, render, scan
from qldbstream.core.decode import RecordType
from qldbstream.core.errors import InputError
from qldbstream.core.records import KinesisRecord
from qldbstream.core.replica import open_sealed_record

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
