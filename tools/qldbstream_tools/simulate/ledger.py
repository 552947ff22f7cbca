"""Ground truth: what the simulated ledger really committed, as plain Python data.

Handler tests compare what a consumer rebuilt from the stream with this: every committed
revision (with its data as Ion values, even when the stream later shows it redacted), the
redactions, the final state of every document, each account's transactions, and the fraud
patterns the workload planted (small-amount bursts, high-value payments).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from qldbstream_tools.simulate.model import Op
from qldbstream_tools.simulate.values import IonValue, ion_text

__all__ = [
    "AccountTransaction",
    "Burst",
    "DocumentState",
    "Ledger",
    "LedgerRedaction",
    "LedgerRevision",
]


@dataclass(frozen=True, slots=True)
class LedgerRevision:
    """One committed revision of a user document."""

    table: str
    table_id: str
    document_id: str
    version: int
    op: Op
    sequence_no: int
    tx_id: str
    tx_time_ms: int
    #: The committed document (``None`` for a delete), even when it was redacted later.
    data: IonValue | None
    #: ``revision.hash`` (for a delete: IonHash(metadata), the spec's inference V2b).
    hash: bytes
    #: IonHash(data), what a redacted revision shows as ``dataHash`` (``None`` for a delete).
    data_hash: bytes | None
    #: Redacted by a later ``redact_revision``: the (replayed) stream shows ``dataHash``.
    redacted: bool = False


@dataclass(frozen=True, slots=True)
class LedgerRedaction:
    """One ``redact_revision``: the block that ran it and the revision it redacted."""

    sequence_no: int
    table: str
    table_id: str
    document_id: str
    version: int
    revision_sequence_no: int
    op: Literal["redact"] = "redact"


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A document after the last committed transaction."""

    table: str
    document_id: str
    version: int
    #: ``None`` once deleted.
    data: IonValue | None

    @property
    def deleted(self) -> bool:
        return self.data is None


@dataclass(frozen=True, slots=True)
class AccountTransaction:
    """A ``Transactions`` document as the bank created it (and whether it was later reversed)."""

    document_id: str
    transaction_id: str
    account_id: str
    type: str
    amount: Decimal
    currency: str
    merchant: str | None
    created_ms: int
    small: bool
    high_value: bool
    reversed: bool = False


@dataclass(frozen=True, slots=True)
class Burst:
    """A planted run of small card payments (amount < the small limit) on one account."""

    account_id: str
    document_ids: tuple[str, ...]
    first_ms: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class Ledger:
    """Everything the simulated ledger committed."""

    ledger_name: str
    strand_id: str
    #: tableName -> tableId.
    table_ids: Mapping[str, str]
    revisions: tuple[LedgerRevision, ...]
    redactions: tuple[LedgerRedaction, ...]
    #: documentId -> final state.
    documents: Mapping[str, DocumentState]
    #: accountId -> its transactions in commit order.
    account_transactions: Mapping[str, tuple[AccountTransaction, ...]]
    bursts: tuple[Burst, ...]
    #: blockAddress.sequenceNo -> the parameters of each statement, in statement order
    #: (what a verifier needs out of band to check V6 on statements with parameters).
    statement_parameters: Mapping[int, tuple[tuple[IonValue, ...], ...]]

    def revision(self, document_id: str, version: int) -> LedgerRevision:
        """The revision ``(documentId, version)``; :class:`KeyError` when there is none."""
        for rev in self.revisions:
            if rev.document_id == document_id and rev.version == version:
                return rev
        raise KeyError(f"no revision {document_id} version {version}")

    def high_value(self, minimum: Decimal) -> list[AccountTransaction]:
        """Transactions of at least ``minimum``, in commit order."""
        out = [t for txs in self.account_transactions.values() for t in txs if t.amount >= minimum]
        return sorted(out, key=lambda t: t.created_ms)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary; Ion values are given as Ion text."""
        return {
            "ledgerName": self.ledger_name,
            "strandId": self.strand_id,
            "tableIds": dict(self.table_ids),
            "revisions": [
                {
                    "table": r.table,
                    "documentId": r.document_id,
                    "version": r.version,
                    "op": r.op,
                    "sequenceNo": r.sequence_no,
                    "txId": r.tx_id,
                    "hash": r.hash.hex(),
                    "redacted": r.redacted,
                    "data": None if r.data is None else ion_text(r.data),
                }
                for r in self.revisions
            ],
            "redactions": [
                {
                    "op": x.op,
                    "sequenceNo": x.sequence_no,
                    "documentId": x.document_id,
                    "version": x.version,
                    "revisionSequenceNo": x.revision_sequence_no,
                }
                for x in self.redactions
            ],
            "bursts": [
                {"accountId": b.account_id, "documentIds": list(b.document_ids), "firstMs": b.first_ms}
                for b in self.bursts
            ],
        }
