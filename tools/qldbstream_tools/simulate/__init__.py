"""A faithful, deterministic QLDB ledger simulator: a small bank, its journal, its Kinesis stream.

QLDB reached end of support in 2025; nobody can produce new real stream data. This package
produces it instead: the same seed and options give byte-identical output. The pipeline has no
I/O until the output step::

    bank (workload)  ->  journal (blocks, revisions, hashes)  ->  stream records (Ion binary)
        ->  tampering (after hashing)  ->  delivery (KPL, duplicates, order, shards)  ->  output

Use :func:`simulate` with a :class:`SimulationConfig`; the :class:`Simulation` it returns holds
the Kinesis records (:attr:`Simulation.deliveries`), the journal records before delivery
(:attr:`Simulation.records`), the expected verdicts of the V1-V9 checks
(:attr:`Simulation.expected`) and the ground truth of the ledger (:attr:`Simulation.ledger`).

Example::

    from qldbstream_tools.simulate import SimulationConfig, Workload, DeliveryOptions, parse_tamper, simulate

    sim = simulate(SimulationConfig(
        seed=7,
        workload=Workload(transactions=500, deletes=10, redactions=3),
        delivery=DeliveryOptions(shards=4, duplicate_rate=0.05, reorder_window=3),
        tampers=(parse_tamper("Transactions#12:data.amount"),),
    ))
    events = list(sim.lambda_events(batch_size=100))
    sim.expected.failing("V2")  # [Failure("V2", <block>, <documentId>, <version>)]
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from qldbstream_tools.simulate.bank import Bank
from qldbstream_tools.simulate.delivery import Delivery, DeliveryOptions, deliver, shard_for
from qldbstream_tools.simulate.journal import Journal, build_journal
from qldbstream_tools.simulate.ledger import (
    AccountTransaction,
    Burst,
    DocumentState,
    Ledger,
    LedgerRedaction,
    LedgerRevision,
)
from qldbstream_tools.simulate.output import EventSource, lambda_events, write_jsonl
from qldbstream_tools.simulate.stream import StreamRecord, build_records
from qldbstream_tools.simulate.tamper import (
    AUTO,
    BlockTarget,
    KplTarget,
    RevisionIndex,
    RevisionTarget,
    TableIndex,
    Tamper,
    apply_tampers,
    parse_tamper,
)
from qldbstream_tools.simulate.values import base62_id, epoch_ms
from qldbstream_tools.simulate.verdicts import CHECKS, ExpectedVerdicts, Failure, TamperReport
from qldbstream_tools.simulate.workload import Workload, WorkloadMix

__all__ = [
    "AUTO",
    "CHECKS",
    "AccountTransaction",
    "BlockTarget",
    "Burst",
    "Delivery",
    "DeliveryOptions",
    "DocumentState",
    "EventSource",
    "ExpectedVerdicts",
    "Failure",
    "KplTarget",
    "Ledger",
    "LedgerRedaction",
    "LedgerRevision",
    "RevisionIndex",
    "RevisionTarget",
    "Simulation",
    "SimulationConfig",
    "StreamRecord",
    "TableIndex",
    "Tamper",
    "TamperReport",
    "Workload",
    "WorkloadMix",
    "parse_tamper",
    "shard_for",
    "simulate",
]

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything that determines the output: same config, same bytes."""

    seed: int = 0
    workload: Workload = field(default_factory=Workload)
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    tampers: tuple[Tamper, ...] = ()
    #: Region, account and Kinesis stream named in ARNs and Lambda events.
    source: EventSource = field(default_factory=EventSource)
    ledger_name: str = "simbank"
    #: ``blockAddress.sequenceNo`` of the first block in the stream.
    start_sequence_no: int = 1
    #: The stream is read after the redactions (redacted revisions show ``dataHash``).
    replayed: bool = True


@dataclass(slots=True)
class Simulation:
    """The result of :func:`simulate`."""

    config: SimulationConfig
    journal: Journal
    #: The journal stream records in journal order, tampered where asked.
    records: list[StreamRecord]
    #: The Kinesis records in put order (duplicates included).
    deliveries: list[Delivery]
    expected: ExpectedVerdicts
    ledger: Ledger
    stream_arn: str

    def records_of(self, record_type: str) -> list[StreamRecord]:
        """The journal records of one type, in journal order."""
        return [r for r in self.records if r.record_type == record_type]

    def lambda_events(self, batch_size: int = 100) -> Iterator[dict[str, Any]]:
        """Lambda Kinesis events (see :mod:`qldbstream_tools.simulate.output`)."""
        return lambda_events(self.deliveries, self.config.source, batch_size)

    def write_jsonl(self, out: IO[str], batch_size: int = 100) -> int:
        """Write the Lambda events as JSON Lines; return how many."""
        return write_jsonl(out, self.deliveries, self.config.source, batch_size)

    def summary(self) -> dict[str, Any]:
        blocks = self.journal.blocks
        revisions = self.ledger.revisions
        return {
            "seed": self.config.seed,
            "qldbStreamArn": self.stream_arn,
            "blocks": len(blocks),
            "firstSequenceNo": blocks[0].sequence_no,
            "lastSequenceNo": blocks[-1].sequence_no,
            "revisions": len(revisions),
            "deletes": sum(r.op == "delete" for r in revisions),
            "redactions": len(self.ledger.redactions),
            "journalRecords": len(self.records),
            "kinesisRecords": len(self.deliveries),
            "duplicates": sum(d.duplicate for d in self.deliveries),
            "shards": self.config.delivery.shards,
            "aggregated": self.config.delivery.aggregate,
            "tampers": len(self.config.tampers),
            "expectedFailures": len(self.expected.failures),
        }


def _rng(seed: int, stream: str) -> random.Random:
    """An independent seeded generator per concern, so delivery knobs never change the journal."""
    # the package's name before it moved to qldbstream-tools: the same seed still gives the same bytes
    return random.Random(f"qldbstream.simulate/{seed}/{stream}")


def simulate(config: SimulationConfig | None = None) -> Simulation:
    """Run the bank, build the journal and the stream, tamper, and deliver. Pure and deterministic."""
    config = config or SimulationConfig()
    config.workload.validate()
    config.delivery.validate()
    identity = _rng(config.seed, "identity")
    strand_id, stream_id = base62_id(identity), base62_id(identity)
    bank = Bank(config.workload, _rng(config.seed, "workload"), _rng(config.seed, "ids"))
    transactions = bank.run()
    journal = build_journal(
        transactions,
        strand_id=strand_id,
        table_ids=bank.tables,
        start_sequence_no=config.start_sequence_no,
        rng=_rng(config.seed, "journal"),
    )
    src = config.source
    arn = f"arn:aws:qldb:{src.region}:{src.account}:stream/{config.ledger_name}/{stream_id}"
    start_ms = epoch_ms(config.workload.start_time)
    records = build_records(
        journal, arn, start_ms=start_ms - 500, completed=config.delivery.completed, replayed=config.replayed
    )
    reports, corrupt = apply_tampers(
        list(config.tampers), records, journal, aggregated=config.delivery.aggregate
    )
    deliveries = deliver(
        records,
        config.delivery,
        _rng(config.seed, "delivery"),
        shard_created_ms=start_ms - _DAY_MS,
        corrupt_md5=corrupt,
    )
    expected = ExpectedVerdicts.of(
        first=journal.blocks[0].sequence_no,
        last=journal.blocks[-1].sequence_no,
        blocks=len(journal.blocks),
        revisions=len(journal.revisions),
        statements=sum(len(b.statements) for b in journal.blocks),
        tampers=reports,
    )
    return Simulation(config, journal, records, deliveries, expected, _ledger(config, bank, journal), arn)


def _ledger(config: SimulationConfig, bank: Bank, journal: Journal) -> Ledger:
    revisions: list[LedgerRevision] = []
    redactions: list[LedgerRedaction] = []
    documents: dict[str, DocumentState] = {}
    for block in journal.blocks:
        for r in block.revisions:
            revisions.append(
                LedgerRevision(
                    r.table,
                    r.table_id,
                    r.document_id,
                    r.version,
                    r.op,
                    r.sequence_no,
                    r.tx_id,
                    r.tx_time_ms,
                    r.data,
                    r.hash,
                    r.data_hash,
                    (r.document_id, r.version) in journal.redacted,
                )
            )
            documents[r.document_id] = DocumentState(r.table, r.document_id, r.version, r.data)
        if block.redaction_info is not None:
            for target in block.redaction_info["revisions"]:
                rev = journal.revisions[(target["documentId"], target["version"])]
                redactions.append(
                    LedgerRedaction(
                        block.sequence_no,
                        rev.table,
                        rev.table_id,
                        rev.document_id,
                        rev.version,
                        rev.sequence_no,
                    )
                )
    return Ledger(
        config.ledger_name,
        journal.strand_id,
        dict(bank.tables),
        tuple(revisions),
        tuple(redactions),
        documents,
        {k: tuple(v) for k, v in bank.account_transactions.items()},
        tuple(bank.bursts),
        {b.sequence_no: tuple(s.parameters for s in b.statements) for b in journal.blocks},
    )
