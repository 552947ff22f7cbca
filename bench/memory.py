#!/usr/bin/env python3
"""Memory stays bounded over a long stream: 1,000,000 user records through the full pipeline.

The stream is produced chunk by chunk by the ledger simulator (each chunk a ledger of its own:
new documents, new strand), pushed through one long-lived ``Pipeline`` with a handler, the
in-memory de-duplication store (bounded, LRU) and a directory DLQ, exactly as a worker would
hold them. Every ``--report-every`` records it prints the records so far, the process's peak
RSS and the sizes of the state that could grow (de-duplication entries, V9 chain runs, V3
pending pairs). Bounded memory shows as a plateau.

    python bench/memory.py --records 1000000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qldbstream_tools.simulate import DeliveryOptions, SimulationConfig, Workload, simulate

from qldbstream.api.router import Router
from qldbstream.core.records import KinesisRecord
from qldbstream.io.dlq import DirectoryDeadLetterQueue
from qldbstream.pipeline.batch import Pipeline
from qldbstream.pipeline.stores import InMemoryDedupeStore


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="user records to push through")
    ap.add_argument("--chunk-transactions", type=int, default=3000, help="ledger transactions per chunk")
    ap.add_argument("--report-every", type=int, default=100_000)
    args = ap.parse_args()
    router = Router("count")
    seen = [0]
    router.add_revision_handler(lambda revision, ctx: seen.__setitem__(0, seen[0] + 1))
    store = InMemoryDedupeStore()
    with tempfile.TemporaryDirectory() as dlq_dir:
        pipeline = Pipeline([router], dlq=DirectoryDeadLetterQueue(dlq_dir), store=store)
        done, chunk, next_report = 0, 0, args.report_every
        started = time.perf_counter()
        print(
            f"{'user records':>12} {'seconds':>8} {'peak RSS MB':>12} {'dedupe entries':>15} "
            f"{'chain runs':>11} {'V3 pending':>11}",
            flush=True,
        )
        while done < args.records:
            sim = simulate(
                SimulationConfig(
                    seed=chunk,
                    workload=Workload(transactions=args.chunk_transactions, redactions=0),
                    delivery=DeliveryOptions(aggregate=True, shards=1, duplicate_rate=0.02),
                )
            )
            batch: list[KinesisRecord] = []
            for d in sim.deliveries:
                batch.append(
                    KinesisRecord(
                        d.data,
                        d.sequence_number,
                        d.partition_key,
                        d.shard_id,
                        d.arrival_ms / 1000,
                        None,
                        None,
                        "memory bench",
                    )
                )
                if len(batch) == 200:
                    done += pipeline.process(d.shard_id, batch).user_records
                    batch = []
            if batch:
                done += pipeline.process("s", batch).user_records
            del sim, batch
            chunk += 1
            if done >= next_report or done >= args.records:
                pending = len(pipeline.verifier.crossref.unmatched())
                print(
                    f"{done:>12,} {time.perf_counter() - started:>8.0f} {rss_mb():>12.0f} {len(store):>15,} "
                    f"{pipeline.verifier.chain.run_count:>11,} {pending:>11,}",
                    flush=True,
                )
                next_report += args.report_every
        print(f"handler calls: {seen[0]:,}; failed checks: {pipeline.verifier.tally.failed}")


if __name__ == "__main__":
    main()
