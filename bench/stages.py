#!/usr/bin/env python3
"""Where the hot path's time goes, stage by stage, on an events file written by ``bench/run.py``.

Runs the same loop as ``bench/ours.py`` cut after each stage (Lambda event -> Kinesis records,
+ deaggregation, + the compiled scan alone, + building the record objects, + verification V1-V9)
and prints the difference between successive cuts in microseconds per user record, best of
``--reps``. A diagnostic for the performance work, not a claim: the claims come from ``run.py``,
side by side with the reference pipeline.

    python bench/stages.py --events bench/out/events-plain-9600-1.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import _scan, decode
from qldbstream.core.errors import PoisonRecordError
from qldbstream.core.verify import Verifier
from qldbstream.io.lambda_event import records_from_event

STAGES = (
    "Lambda event -> Kinesis records",
    "deaggregate (KPL, MD5)",
    "scan",
    "record objects",
    "verify V1-V9",
)


def run(events: list[dict], cut: int) -> int:
    verifier = Verifier()
    n = 0
    for event in events:
        for item in records_from_event(event):
            if cut == 0 or isinstance(item, PoisonRecordError):
                continue
            for user in deaggregate(item):
                n += 1
                if cut == 1:
                    continue
                if cut == 2:
                    _scan(user.data)
                    continue
                record = decode(user)
                if cut == 4:
                    verifier.verify(record)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", required=True)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    events = [json.loads(line) for line in Path(args.events).read_text().splitlines() if line.strip()]
    n = run(events, 1)
    best = [float("inf")] * len(STAGES)
    for _ in range(args.reps):
        for cut in range(len(STAGES)):
            gc.collect()
            t0 = time.perf_counter()
            run(events, cut)
            best[cut] = min(best[cut], time.perf_counter() - t0)
    previous = 0.0
    print(f"{args.events}: {n} user records, best of {args.reps}")
    for name, seconds in zip(STAGES, best, strict=True):
        print(f"  {name:34s} {(seconds - previous) * 1e6 / n:6.2f} us/record")
        previous = seconds
    print(f"  {'total':34s} {best[-1] * 1e6 / n:6.2f} us/record  ({n / best[-1]:,.0f} records/s)")


if __name__ == "__main__":
    main()
