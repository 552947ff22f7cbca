#!/usr/bin/env python3
"""qldbstream's hot path on a JSON-Lines file of Lambda Kinesis events, timed like the reference.

Per event: read its records (base64) → deaggregate (KPL, MD5 checked) → decode → verify V1-V9
(revision hashes, block Merkle roots, entries hash, block hash, chain, cross-record V3). Records
stream through; nothing is kept beyond the verifier's own V3/V9 state. Prints per-rep times and
writes the median rate to ``--json-out``.

``--parse-data`` additionally parses every revision's full ``data`` into exact Ion values (what
a handler touching ``revision.data`` costs); without it, data stays lazy (hashed from bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qldbstream.core.decode as qldbstream_decode
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.verify import Verifier
from qldbstream.io.lambda_event import records_from_event


def run_once(events: list[dict], parse_data: bool) -> tuple[int, int, int]:
    verifier = Verifier()
    n = failed = 0
    for event in events:
        for item in records_from_event(event):
            if isinstance(item, PoisonRecordError):
                failed += 1
                continue
            aggregated = item.data[:4] == KPL_MAGIC
            users = deaggregate(item)
            if aggregated:
                verifier.aggregate(item.position, None)
            for user in users:
                record = decode(user)
                n += 1
                failed += len(verifier.verify(record))
                if parse_data and isinstance(record, RevisionDetails):
                    record.data  # noqa: B018 - the point is to pay for the parse
    return n, failed, verifier.tally.counts["V2"][0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--parse-data", action="store_true")
    ap.add_argument("--json-out")
    ap.add_argument("--python-only", action="store_true", help="use the pure-Python scanner")
    args = ap.parse_args()
    if args.python_only:
        import qldbstream.core.native

        qldbstream.core.native.use(False)
    events = [json.loads(line) for line in Path(args.events).read_text().splitlines() if line.strip()]
    times = []
    for rep in range(args.reps):
        gc.collect()
        t0 = time.perf_counter()
        n, failed, revisions = run_once(events, args.parse_data)
        times.append(time.perf_counter() - t0)
        if failed:
            raise SystemExit(f"verification failed {failed} times: the bench input must be authentic")
        print(f"rep {rep}: {times[-1]:.3f}s  {n} user records  {n / times[-1]:,.0f} records/s", flush=True)
    median = statistics.median(times)
    result = {
        "user_records": n,
        "revisions": revisions,
        "seconds": times,
        "rate_median": n / median,
        "revisions_per_s_median": revisions / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parse_data": args.parse_data,
        "native": not args.python_only and qldbstream_decode.native_available(),
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
