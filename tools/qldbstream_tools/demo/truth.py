"""What the demo must find, computed from the simulator's ground truth - never hard-coded.

Everything here is a pure function of the :class:`~qldbstream_tools.simulate.Simulation`: the failures
the tamper plants (:attr:`Simulation.expected`), the revisions the ledger committed, the bursts
and high-value payments the bank planted (:attr:`Simulation.ledger`). A revision named by a
planted V2/V3 failure is *dead* (it must go to the DLQ and reach no handler); so is every revision
of a block whose aggregate cannot be read (``kpl=N:md5``). Every other revision is *delivered*.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from qldbstream.core.gate import VOUCHING_CHECKS
from qldbstream_tools.simulate import Burst, Simulation

__all__ = [
    "BURST_MIN_PAYMENTS",
    "HIGH_VALUE_MIN",
    "FailureKey",
    "GroundTruth",
    "RevisionKey",
    "Velocity",
    "failure_key",
]

#: The fraud handler's default thresholds (its seed pattern and ``high_value``).
BURST_MIN_PAYMENTS = 5
HIGH_VALUE_MIN = Decimal("10000")

#: ``(check, block sequenceNo, documentId)``; V1 carries neither (a Kinesis record, not a block).
FailureKey = tuple[str, int | None, str | None]
RevisionKey = tuple[str, int]
#: Per 1-minute window start (epoch ms): transactions, distinct accounts, total amount.
Velocity = dict[int, tuple[int, int, Decimal]]


def failure_key(check: str, block: int | None, document_id: str | None) -> FailureKey:
    return (check, None, None) if check == "V1" else (check, block, document_id)


@dataclass(frozen=True)
class GroundTruth:
    """The expectations of one simulation (see the module docstring)."""

    failures: frozenset[FailureKey]
    #: revisions a planted failure names: to the DLQ, to no handler
    dead: frozenset[RevisionKey]
    #: revisions whose record in the stream is not what the ledger committed (the tampered one)
    forged: frozenset[RevisionKey]
    #: revisions in blocks that cannot be read at all
    unreadable: frozenset[RevisionKey]
    delivered: frozenset[RevisionKey]
    velocity: Velocity
    #: planted bursts the fraud rule must find (at least BURST_MIN_PAYMENTS delivered payments)
    bursts: tuple[Burst, ...]
    #: documentId -> accountId of every delivered high-value payment
    high_value: dict[str, str]
    #: workflow event ids (``<documentId>-<version>``) that route to the compliance check
    compliance: frozenset[str]
    #: every small (burst) payment per account: what burst alerts may name as evidence
    small_payments: dict[str, frozenset[str]]

    @classmethod
    def of(cls, sim: Simulation) -> GroundTruth:
        expected = sim.expected
        failures = frozenset(
            failure_key(f.check, f.sequence_no, f.document_id)
            for f in expected.failures
            if not f.requires_parameters  # V6 with parameters needs them out of band: skipped
        )
        dead = frozenset(
            (f.document_id, f.version)
            for f in expected.failures
            if f.check in ("V2", "V2b", "V3") and f.document_id is not None and f.version is not None
        )
        blocks = set(expected.unreadable)
        revisions = sim.ledger.revisions
        # a block whose own hashes do not hold together vouches for none of its revisions: the
        # delivery gate withholds them all (qldbstream.core.gate)
        withheld: dict[int, set[str]] = defaultdict(set)
        for f in expected.failures:
            if f.check in VOUCHING_CHECKS and f.sequence_no is not None:
                withheld[f.sequence_no].add(f.check)
        held = [r for r in revisions if r.sequence_no in withheld]
        dead = dead | frozenset((r.document_id, r.version) for r in held)
        failures = failures | frozenset(
            failure_key("/".join(sorted(withheld[r.sequence_no])), r.sequence_no, r.document_id) for r in held
        )
        unreadable = frozenset((r.document_id, r.version) for r in revisions if r.sequence_no in blocks)
        forged = _forged(sim)
        delivered = frozenset((r.document_id, r.version) for r in revisions) - dead - forged - unreadable
        live = {
            (r.document_id, r.version): r
            for r in revisions
            if (r.document_id, r.version) in delivered and not r.redacted and r.data is not None
        }
        windows: dict[int, list[Any]] = defaultdict(lambda: [0, set(), Decimal(0)])
        high: dict[str, str] = {}
        compliance: set[str] = set()
        for (doc, version), r in live.items():
            data: Any = r.data
            if r.table == "Transactions" and r.op == "insert" and version == 0:
                w = windows[r.tx_time_ms - r.tx_time_ms % 60_000]
                w[0] += 1
                w[1].add(data["accountId"])
                w[2] += data["amount"]
                if data["amount"] >= HIGH_VALUE_MIN:
                    high[doc] = data["accountId"]
            if r.table == "Accounts" and (data.get("status") == "FROZEN" or data.get("reviewRequired")):
                compliance.add(f"{doc}-{version}")
        small: dict[str, set[str]] = defaultdict(set)
        for burst in sim.ledger.bursts:
            small[burst.account_id].update(burst.document_ids)
        bursts = tuple(
            b for b in sim.ledger.bursts if sum((d, 0) in live for d in b.document_ids) >= BURST_MIN_PAYMENTS
        )
        return cls(
            failures,
            dead,
            forged,
            unreadable,
            delivered,
            {start: (n, len(accounts), total) for start, (n, accounts, total) in sorted(windows.items())},
            bursts,
            high,
            frozenset(compliance),
            {a: frozenset(d) for a, d in small.items()},
        )

    @property
    def tampered(self) -> frozenset[RevisionKey]:
        """Revisions that must reach no handler: named by a planted failure, or forged."""
        return self.dead | self.forged | self.unreadable

    @property
    def audit_keys(self) -> frozenset[str]:
        """The audit handler's line keys of every delivered revision (``<documentId>#<version>``)."""
        return frozenset(f"{d}#{v}" for d, v in self.delivered)


def _forged(sim: Simulation) -> frozenset[RevisionKey]:
    """REVISION_DETAILS records that differ from what the journal wrote (a tamper changed them)."""
    from amazon.ion import simpleion

    from qldbstream_tools.simulate.stream import revision_details

    journal = sim.journal
    out = set()
    for record in sim.records_of("REVISION_DETAILS"):
        key = (record.document_id, record.version)
        if record.document_id is None or record.version is None or key not in journal.revisions:
            continue
        authentic = revision_details(
            journal.strand_id,
            journal.revisions[(record.document_id, record.version)],
            redacted=sim.config.replayed and (record.document_id, record.version) in journal.redacted,
        )
        dump = simpleion.dumps(authentic, binary=True)
        if dump != simpleion.dumps(record.value["payload"], binary=True):
            out.add((record.document_id, record.version))
    return frozenset(out)
