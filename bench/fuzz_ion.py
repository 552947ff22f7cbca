#!/usr/bin/env python3
"""The differential fuzz of the Ion scanner: mutated journal records through the pure-Python
scanner, the compiled scanner and amazon-ion, every disagreement printed.

Mutations of real and simulated QLDB records (bit flips, byte insertions and deletions, length
fields, truncation, and targeted timestamp / string / decimal / int edits). For each record: the
two scanners must agree (result, or error kind and message); a record they accept must load in
amazon-ion to the same value (fields and Ion hashes; every ``--oracle-every``-th accepted record
also through PyPI ionhash). See ``tests/support/ion_fuzz.py`` for the rules;
``tests/unit/test_ion_fuzz.py`` runs a slice of it in the test suite.

amazon-ion's C reader can loop forever on malformed input, so each worker process is watched: a
load that takes longer than ``--hang-seconds`` is reported (as a disagreement when the scanners
accepted the record) and the worker restarts after it.

    python bench/fuzz_ion.py --count 1000000 --jobs 2
    python bench/fuzz_ion.py --count 20000 --seed 3       # a quick look

Exit status 1 when any disagreement was found.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import ion_fuzz

CHUNK = 5_000


def _worker(tasks: Any, results: Any, current: Any, seed: int, oracle_every: int, python_only: bool) -> None:
    native = None
    if not python_only:
        import qldbstream_native as native  # a missing extension is an error here
    from tests.support.oracles import import_ionhash

    oracle = import_ionhash()
    seeds = ion_fuzz.corpus()

    def loading(index: int | None) -> None:
        current.value = -1 if index is None else index

    while True:
        task = tasks.get()
        if task is None:
            return
        start, stop = task
        results.put(
            (start, stop, ion_fuzz.run(start, stop, seed, seeds, native, oracle, oracle_every, loading))
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="mutated records (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--oracle-every", type=int, default=50, help="ionhash on every Nth accepted record")
    parser.add_argument("--hang-seconds", type=float, default=20.0)
    parser.add_argument("--python-only", action="store_true", help="without the compiled scanner")
    args = parser.parse_args()

    ctx = mp.get_context("fork")
    tasks: Any = ctx.Queue()
    results: Any = ctx.Queue()
    for start in range(0, args.count, CHUNK):
        tasks.put((start, min(start + CHUNK, args.count)))
    report = ion_fuzz.Report()
    seeds = ion_fuzz.corpus()
    started = time.monotonic()
    workers: list[tuple[Any, Any]] = []

    def spawn() -> tuple[Any, Any]:
        current = ctx.Value("q", -1)
        p = ctx.Process(
            target=_worker,
            args=(tasks, results, current, args.seed, args.oracle_every, args.python_only),
            daemon=True,
        )
        p.start()
        return p, current

    workers = [spawn() for _ in range(args.jobs)]
    pending = {(s, min(s + CHUNK, args.count)) for s in range(0, args.count, CHUNK)}
    watched: dict[int, tuple[int, float]] = {}
    done = 0
    while pending:
        try:
            start, stop, part = results.get(timeout=1.0)
        except Exception:  # queue.Empty: look at the workers
            part = None
        if part is not None:
            pending.discard((start, stop))
            report.merge(part)
            done += stop - start
            if done // 100_000 != (done - (stop - start)) // 100_000:
                rate = done / (time.monotonic() - started)
                print(
                    f"  {done:,} records, {rate:,.0f}/s, {sum(report.disagreements.values())} disagreements",
                    file=sys.stderr,
                    flush=True,
                )
        now = time.monotonic()
        for n, (p, current) in enumerate(workers):
            index = current.value
            if index < 0:
                watched.pop(n, None)
                continue
            seen = watched.get(n)
            if seen is None or seen[0] != index:
                watched[n] = (index, now)
            elif now - seen[1] > args.hang_seconds:
                # amazon-ion hangs on a record the scanners accepted: note it, redo the rest
                p.kill()
                p.join()
                _, data = ion_fuzz.record_at(index, args.seed, seeds)
                report.outcomes["accepted, amazon-ion hangs"] += 1
                report.disagree("accepted, amazon-ion hangs", data, f"record {index}")
                chunk = next(c for c in pending if c[0] <= index < c[1])
                pending.discard(chunk)
                done += index + 1 - chunk[0]
                print(f"  record {index}: amazon-ion hangs; worker restarted", file=sys.stderr, flush=True)
                # the chunk's records before the hang are judged again, without their counts lost
                if chunk[0] < index:
                    pending.add((chunk[0], index))
                    tasks.put((chunk[0], index))
                    done -= index - chunk[0]
                if index + 1 < chunk[1]:
                    pending.add((index + 1, chunk[1]))
                    tasks.put((index + 1, chunk[1]))
                watched.pop(n, None)
                workers[n] = spawn()
    for _ in workers:
        tasks.put(None)
    seconds = time.monotonic() - started

    print(
        f"differential Ion fuzz: {args.count:,} mutated records from {len(seeds)} seeds, seed {args.seed}, "
        f"{'pure Python only' if args.python_only else 'pure Python and compiled'}, "
        f"{args.jobs} worker(s), {seconds:,.0f} s"
    )
    print("first mutation of each record:")
    for kind, n in sorted(report.mutations.items()):
        print(f"  {kind:<12} {n:>10,}")
    print("outcomes:")
    for outcome, n in sorted(report.outcomes.items()):
        print(f"  {outcome:<40} {n:>10,}")
    if report.notes:
        print("noted (no disagreement):")
        for note, n in sorted(report.notes.items()):
            print(f"  {note:<70} {n:>10,}")
    total = sum(report.disagreements.values())
    print(f"disagreements: {total:,}")
    for what, n in sorted(report.disagreements.items()):
        print(f"  {what}: {n:,}")
        for example in report.examples.get(what, []):
            print(f"    {example}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
