#!/usr/bin/env python3
"""The seed design's provisioned shard count, and the table ``kinesis-stream.yaml`` looks it up in.

The rule (``docs/deploy.md``, *Shard count*)::

    shards = ceil(expected_tps * avg_records_per_tx / 1000)      # 1,000 records/s per shard

CloudFormation has no arithmetic, so the template cannot compute it. It offers two exact ways:

* ``ShardCount`` > 0: the count itself, computed here for any inputs::

      python deploy/shard_count.py --tps 730 --records-per-tx 3.2      # -> 3

* ``ShardCount`` = 0: the template looks ``ceil(tps * records / 1000)`` up in its ``ShardCountTable``
  mapping, keyed by ``ExpectedTransactionsPerSecond`` and ``AverageRecordsPerTransaction``. Both
  parameters only take the values below, and the table holds the rule's exact value for every pair.
  ``python deploy/shard_count.py --table`` prints the mapping; ``tests/deploy`` checks that the template
  holds exactly it. Between two table values, round the inputs *up* (more shards, never fewer) or pass
  ``ShardCount``.

Only the standard library: the script runs wherever the templates are deployed from.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "RECORDS_PER_SECOND_PER_SHARD",
    "RECORDS_PER_TX_VALUES",
    "TPS_VALUES",
    "shard_count",
    "shard_table",
    "table_yaml",
]

#: Kinesis accepts 1,000 records (and 1 MiB) per second per shard for writes.
RECORDS_PER_SECOND_PER_SHARD = 1000
#: The values ``ExpectedTransactionsPerSecond`` accepts (its ``AllowedValues``).
TPS_VALUES: tuple[int, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
#: The values ``AverageRecordsPerTransaction`` accepts.
RECORDS_PER_TX_VALUES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)


def shard_count(tps: Decimal | int | str, records_per_tx: Decimal | int | str) -> int:
    """``ceil(tps * records_per_tx / 1000)``, at least 1, computed exactly (decimals, no float rounding)."""
    try:
        t, r = Decimal(str(tps)), Decimal(str(records_per_tx))
    except InvalidOperation:
        raise ValueError(f"not numbers: tps={tps!r}, records_per_tx={records_per_tx!r}") from None
    if not (t.is_finite() and r.is_finite()) or t <= 0 or r <= 0:
        raise ValueError(f"tps and records_per_tx must be positive (got {tps!r}, {records_per_tx!r})")
    return max(1, math.ceil(t * r / RECORDS_PER_SECOND_PER_SHARD))


def shard_table() -> dict[str, dict[str, int]]:
    """The ``ShardCountTable`` mapping: TPS value -> records-per-transaction value -> shard count."""
    return {str(t): {str(r): shard_count(t, r) for r in RECORDS_PER_TX_VALUES} for t in TPS_VALUES}


def table_yaml(indent: int = 2) -> str:
    """The mapping as the YAML block the template holds (under ``Mappings:``)."""
    pad = " " * indent
    lines = [f"{pad}ShardCountTable:"]
    for tps, row in shard_table().items():
        cells = ", ".join(f'"{r}": {n}' for r, n in row.items())
        lines.append(f'{pad * 2}"{tps}": {{{cells}}}')
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tps", help="expected QLDB transactions per second (peak)")
    p.add_argument("--records-per-tx", help="average Kinesis records per transaction")
    p.add_argument("--table", action="store_true", help="print the template's ShardCountTable mapping")
    a = p.parse_args(argv)
    if a.table:
        sys.stdout.write(table_yaml())
        return 0
    if a.tps is None or a.records_per_tx is None:
        p.error("give --tps and --records-per-tx, or --table")
    try:
        sys.stdout.write(f"{shard_count(a.tps, a.records_per_tx)}\n")
    except ValueError as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
