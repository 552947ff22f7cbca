"""``qldbstream inspect``: show records - one, or a whole aggregate - with their verdict."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from qldbstream.cli.common import read_input
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import decode
from qldbstream.core.errors import DeaggregationError, InputError, PoisonRecordError
from qldbstream.core.verify import Verifier

__all__ = ["ion_to_json", "register", "run"]

EXAMPLES = """\
examples:
  qldbstream inspect event.json                        every record of a Lambda event, as Ion text
  qldbstream inspect event.json --index 0 --json       the first Kinesis record (all its user records) as JSON
  qldbstream inspect dump.jsonl --sequence-number 49608533396912580565843582016389495421776335424639205378
  qldbstream inspect record.ion --raw                  also show the bytes (hex) and the KPL layout

JSON is for reading: Ion types without a JSON equivalent become strings (decimals, timestamps
with their precision and offset) or base64 (blobs). Use the Ion text for exact values.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show records (or whole KPL aggregates) as Ion text or JSON, with their verdict",
        description="Show QLDB stream records with their position and verification verdict.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="FILE", help="any input 'qldbstream verify' reads; - for standard input")
    p.add_argument("--index", type=int, metavar="N", help="only the N-th Kinesis record (0-based)")
    p.add_argument(
        "--sequence-number", metavar="SEQ", help="only the Kinesis record with this sequence number"
    )
    p.add_argument("--json", action="store_true", help="render records as JSON instead of Ion text")
    p.add_argument("--raw", action="store_true", help="also show the record bytes in hex")
    p.set_defaults(handler=run)


def ion_to_json(value: Any) -> Any:
    """A JSON-friendly rendering of amazon-ion values (lossy by nature; for reading)."""
    from amazon.ion.core import IonType

    ion_type = getattr(value, "ion_type", None)
    if value is None or (ion_type is not None and type(value).__name__ == "IonPyNull"):
        return None
    if isinstance(value, Mapping):
        return {str(k): ion_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [ion_to_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        from amazon.ion import simpleion

        return simpleion.dumps(value, binary=False).removeprefix("$ion_1_0 ")
    if ion_type is IonType.SYMBOL:
        return getattr(value, "text", str(value))
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def run(args: argparse.Namespace) -> int:
    from amazon.ion import simpleion

    got = read_input(args.input)
    items = list(got.records)
    if not items and (got.proofs or got.digests):
        raise InputError(
            f"{args.input}: a digest or a hash with its proof, no records to show: "
            "check it with qldbstream verify"
        )
    if args.index is not None:
        if not 0 <= args.index < len(items):
            raise InputError(f"--index {args.index}: the input has {len(items)} Kinesis records")
        items = [items[args.index]]
    if args.sequence_number is not None:
        items = [
            i
            for i in items
            if not isinstance(i, PoisonRecordError) and i.sequence_number == args.sequence_number
        ]
        if not items:
            raise InputError(f"no record with sequence number {args.sequence_number}")
    verifier = Verifier()
    out = sys.stdout
    all_ok = True
    for item in items:
        if isinstance(item, PoisonRecordError):
            all_ok = False
            out.write(
                f"## {item.position.describe() if item.position else '?'}: UNREADABLE - {item.message}\n"
            )
            continue
        aggregated = item.data[:4] == KPL_MAGIC
        out.write(
            f"## Kinesis record {item.position.describe()}  partition key {item.partition_key!r}  "
            f"{len(item.data)} bytes{', KPL aggregate' if aggregated else ''}\n"
        )
        if args.raw:
            out.write(item.data.hex() + "\n")
        try:
            users = deaggregate(item)
        except DeaggregationError as exc:
            all_ok = False
            out.write(f"   V1 FAILED: {exc.message}\n")
            continue
        if aggregated:
            verifier.aggregate(item.position, None)
            out.write(f"   V1 passed: magic and MD5 valid, {len(users)} user records\n")
        for user in users:
            head = f"### user record {user.sub_sequence_number}  partition key {user.partition_key}"
            try:
                record = decode(user)
                failures = verifier.verify(record)
            except PoisonRecordError as exc:
                all_ok = False
                out.write(f"{head}\n   UNREADABLE ({type(exc).__name__}): {exc.message}\n")
                continue
            verdict = (
                "verified"
                if not failures
                else "FAILED " + ", ".join(f"{f.check}: {f.message}" for f in failures)
            )
            all_ok = all_ok and not failures
            out.write(f"{head}  {record.record_type.value}  {verdict}\n")
            if args.json:
                out.write(json.dumps(ion_to_json(record.ion), indent=2, ensure_ascii=False) + "\n")
            else:
                text = simpleion.dumps(record.ion, binary=False, indent="  ")
                out.write(text.removeprefix("$ion_1_0").lstrip() + "\n")
    return 0 if all_ok else 1
