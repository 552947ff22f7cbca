"""Simulated streams as the pipeline sees them: Kinesis records grouped by shard, in order."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from qldbstream_tools.simulate import (
    DeliveryOptions,
    Simulation,
    SimulationConfig,
    Workload,
    parse_tamper,
    simulate,
)

from qldbstream.core.records import KinesisRecord


def simulation(
    transactions: int = 60,
    *,
    seed: int = 3,
    shards: int = 1,
    aggregate: bool = True,
    duplicates: float = 0.0,
    reorder: int = 0,
    tampers: tuple[str, ...] = (),
    **workload: Any,
) -> Simulation:
    return simulate(
        SimulationConfig(
            seed=seed,
            workload=Workload(transactions=transactions, **workload),
            delivery=DeliveryOptions(
                aggregate=aggregate, shards=shards, duplicate_rate=duplicates, reorder_window=reorder
            ),
            tampers=tuple(parse_tamper(t) for t in tampers),
        )
    )


def kinesis_records(sim: Simulation) -> dict[str, list[KinesisRecord]]:
    """Each shard's records in sequence-number order, as GetRecords or a Lambda event gives them."""
    out: dict[str, list[KinesisRecord]] = defaultdict(list)
    for d in sim.deliveries:
        out[d.shard_id].append(
            KinesisRecord(
                d.data,
                d.sequence_number,
                d.partition_key,
                d.shard_id,
                d.arrival_ms / 1000,
                d.explicit_hash_key,
                "arn:aws:kinesis:eu-west-1:123456789012:stream/sim",
                f"sim {d.shard_id}",
            )
        )
    for records in out.values():
        records.sort(key=lambda r: int(r.sequence_number))
    return dict(out)


def batches(records: list[KinesisRecord], size: int) -> list[list[KinesisRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]
