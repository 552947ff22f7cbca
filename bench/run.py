#!/usr/bin/env python3
"""Side-by-side benchmark: qldbstream's hot path vs the reference pipeline, same input, one run.

1. Generates a simulated QLDB stream with the ledger simulator (default ≈20,000 revisions and
   ≈9,600 block summaries), KPL-aggregated and not, as JSON Lines of Lambda Kinesis events.
   Redactions are off: the reference pipeline cannot verify a redacted revision.
2. Runs ``bench/reference/ref_pipeline.py`` (deaggregate with aws-kinesis-agg, parse with
   amazon-ion, verify revision hashes with ionhash) and ``bench/ours.py`` (deaggregate, decode
   and verify V1-V9: revision hashes *and* every block check, chain and cross-record checks)
   as separate processes on the same file, alternating, ``--reps`` times each.
3. Prints records/s of each (median) and the ratio, plus the cost of parsing every revision's
   ``data`` into Ion values (what a handler reading ``revision.data`` pays) and peak RSS. On a
   shared machine other tenants slow either run in bursts (the same run varies by +-30 %), so it
   also prints the ratio of the best run of each: interference only ever slows a run down.

The reference counts only what it does (it verifies revisions, not blocks); the ratio is
user records per second, end to end, on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def generate(path: Path, transactions: int, aggregate: bool, seed: int) -> dict[str, object]:
    from qldbstream_tools.simulate import DeliveryOptions, SimulationConfig, Workload, simulate

    sim = simulate(
        SimulationConfig(
            seed=seed,
            workload=Workload(transactions=transactions, redactions=0),
            delivery=DeliveryOptions(aggregate=aggregate, shards=4),
        )
    )
    with open(path, "w") as f:
        sim.write_jsonl(f, batch_size=100)
    return sim.summary()


def run(cmd: list[str], out: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run([*cmd, "--json-out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--transactions", type=int, default=9600, help="ledger transactions (≈2.1 revisions each)"
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions per pipeline and input")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "out"))
    ap.add_argument("--python-only", action="store_true", help="disable the compiled extension for ours")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
    from qldbstream.core.decode import native_available

    native = native_available() and not args.python_only
    print(f"qldbstream scanner: {'compiled (qldbstream-native)' if native else 'pure Python'}")
    rows = []
    for aggregate in (True, False):
        name = "aggregated" if aggregate else "not aggregated"
        events = out / f"events-{'agg' if aggregate else 'plain'}-{args.transactions}-{args.seed}.jsonl"
        if not events.exists():
            summary = generate(events, args.transactions, aggregate, args.seed)
            print(
                f"generated {events.name}: {summary['revisions']} revisions, {summary['journalRecords']} "
                f"journal records in {summary['kinesisRecords']} Kinesis records"
            )
        ref_times, our_times = [], []
        ours_cmd = [py, str(ROOT / "ours.py"), "--events", str(events), "--reps", "1"]
        if args.python_only:
            ours_cmd.append("--python-only")
        for _ in range(args.reps):  # alternate so that machine noise hits both alike
            ref = run(
                [py, str(ROOT / "reference" / "ref_pipeline.py"), "--events", str(events), "--reps", "1"],
                out / "ref.json",
            )
            ref_times.append(ref["stages"]["total_fused"]["rate_median"])  # type: ignore[index]
            ours = run(ours_cmd, out / "ours.json")
            our_times.append(ours["rate_median"])
        full = run([*ours_cmd, "--parse-data"], out / "ours-data.json")
        print(
            f"{name}: reference rec/s {', '.join(f'{r:,.0f}' for r in ref_times)}; "
            f"qldbstream rec/s {', '.join(f'{r:,.0f}' for r in our_times)}",
            flush=True,
        )
        ref_rate = sorted(ref_times)[len(ref_times) // 2]
        our_rate = sorted(our_times)[len(our_times) // 2]
        best = max(our_times) / max(ref_times)
        rows.append(
            (name, ref_rate, our_rate, best, full["rate_median"], ours["peak_rss_mb"], ours["user_records"])
        )
    print()
    print(
        f"{'input':16} {'records':>8} {'reference rec/s':>16} {'qldbstream rec/s':>17} {'ratio':>7} "
        f"{'best/best':>10} {'+parse data rec/s':>18} {'peak RSS MB':>12}"
    )
    for name, ref_rate, our_rate, best, full_rate, rss, n in rows:
        print(
            f"{name:16} {n:>8} {ref_rate:>16,.0f} {our_rate:>17,.0f} {our_rate / ref_rate:>6.1f}x "
            f"{best:>9.1f}x {full_rate:>18,.0f} {rss:>12.0f}"
        )
    print("(records/s: median of the runs; ratio: of the medians; best/best: of each one's fastest run)")


if __name__ == "__main__":
    main()
