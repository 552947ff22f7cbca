#!/usr/bin/env python3
"""The V3 / V9 state alone over a long stream: does it stay bounded?

Feeds a :class:`~qldbstream.core.verify.Verifier`'s ``CrossReferencer`` and ``ChainTracker`` (the
compiled ones when qldbstream-native is installed, else the Python ones) ``--blocks`` synthetic
block summaries of two documented revisions each; a third of the blocks never get their second
revision, so they wait until ``max_pending`` (200,000) evicts them as unmatched. Prints peak RSS
every ``--report-every`` blocks: a bounded state shows as a plateau.

    python bench/state_memory.py --blocks 3000000
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qldbstream.core.verify import Verifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=3_000_000)
    ap.add_argument("--report-every", type=int, default=500_000)
    args = ap.parse_args()
    verifier = Verifier(max_pending=200_000)
    crossref, chain = verifier.crossref, verifier.chain
    print(f"state: {type(crossref).__module__}.{type(crossref).__name__}, {type(chain).__name__}")
    print(f"{'blocks':>10} {'peak RSS MB':>12} {'evicted':>9} {'chain runs':>11}")

    def h(i: int) -> bytes:
        return i.to_bytes(32, "big")

    for i in range(1, args.blocks + 1):
        crossref.add_block_entries("S", i, "tx", {h(2 * i): "d", h(2 * i + 1): "e"})
        crossref.add_revision("S", i, "d", 0, "tx", h(2 * i))
        if i % 3:
            crossref.add_revision("S", i, "e", 0, "tx", h(2 * i + 1))
        chain.check("S", i, h(i), h(i - 1))
        if i % args.report_every == 0:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{i:>10,} {rss:>12.0f} {len(crossref.evicted):>9,} {chain.run_count:>11,}", flush=True)
            crossref.evicted.clear()  # what a report would take away


if __name__ == "__main__":
    main()
