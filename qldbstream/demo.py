"""The vertical-slice demo: simulated ledger → Kinesis (embedded moto) → read back → verify.

Everything runs in this process against a local AWS on 127.0.0.1 (no account, no Docker):

1. start moto's server in-process and create a multi-shard Kinesis stream;
2. simulate a small bank's QLDB ledger into it - KPL-aggregated the way QLDB writes, with a few
   duplicate deliveries, some reordering and **one tampered revision**;
3. read every shard back until caught up, deaggregate, decode and verify (V1-V9);
4. print the report, and compare what verification found with what the simulator planted.

The demo succeeds (exit 0) when verification finds exactly the planted tampering and nothing
else - the tampered revision must be caught, and nothing authentic may be flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qldbstream.report import VerificationReport, verify_records

__all__ = ["DemoOptions", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    seed: int = 2024
    transactions: int = 400
    shards: int = 4
    duplicate_rate: float = 0.03
    reorder_window: int = 3
    tamper: str = "Transactions#5:data.amount"
    stream_name: str = "qldbstream-demo"


@dataclass
class DemoResult:
    report: VerificationReport
    expected: list[tuple[str, int, str | None]]
    found: list[tuple[str, int, str | None]]
    summary: dict[str, Any]
    endpoint: str

    @property
    def matches(self) -> bool:
        return self.expected == self.found and not self.report.errors


Progress = Callable[[str, int, int | None], None]


def run_demo(options: DemoOptions, progress: Progress | None = None) -> DemoResult:
    from qldbstream.localaws import LocalAws
    from qldbstream.simulate import DeliveryOptions, SimulationConfig, Workload, parse_tamper, simulate
    from qldbstream.sources.kinesis import read_stream
    from qldbstream.sources.kinesis_put import PutEntry, create_stream, put_records

    def step(what: str, done: int, total: int | None = None) -> None:
        if progress is not None:
            progress(what, done, total)

    step("simulating the ledger", 0, 1)
    sim = simulate(
        SimulationConfig(
            seed=options.seed,
            workload=Workload(transactions=options.transactions),
            delivery=DeliveryOptions(
                aggregate=True,
                shards=options.shards,
                duplicate_rate=options.duplicate_rate,
                reorder_window=options.reorder_window,
            ),
            tampers=(parse_tamper(options.tamper),),
        )
    )
    step("simulating the ledger", 1, 1)
    with LocalAws() as aws:
        kinesis = aws.client("kinesis")
        create_stream(kinesis, options.stream_name, options.shards)
        entries = [PutEntry(d.data, d.partition_key, d.explicit_hash_key) for d in sim.deliveries]
        step("putting records into Kinesis", 0, len(entries))
        for start in range(0, len(entries), 500):
            put_records(kinesis, options.stream_name, entries[start : start + 500])
            step("putting records into Kinesis", min(start + 500, len(entries)), len(entries))
        report = VerificationReport()
        read = 0

        def tick(n: int) -> None:
            nonlocal read
            read += 1
            step("reading every shard and verifying", read, len(entries))

        verify_records(read_stream(kinesis, options.stream_name, poll_interval=0.05), report, tick)
        report.finish()
        endpoint = aws.endpoint
    expected = sorted(
        (f.check, f.sequence_no, f.document_id) for f in sim.expected.failures if not f.requires_parameters
    )
    found = sorted(
        (f.check, f.block_sequence_no or -1, f.document_id) for f in report.failures if f.check != "V6"
    ) + sorted((f.check, f.block_sequence_no or -1, None) for f in report.failures if f.check == "V6")
    return DemoResult(report, expected, sorted(found), sim.summary(), endpoint)
