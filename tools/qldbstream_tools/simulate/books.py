"""The bank's books: the state a :class:`~qldbstream_tools.simulate.bank.Bank` run keeps - its
documents as they stand, the revisions committed, each account's transactions and the planted
bursts (the ground truth) - and the helpers that create and change documents.

:class:`BankBooks` is the base of :class:`~qldbstream_tools.simulate.bank.Bank`, which runs the
transaction kinds against it.
"""

from __future__ import annotations

import random
from decimal import Decimal

from qldbstream_tools.simulate import bankdata
from qldbstream_tools.simulate.bankdata import UPDATE_BALANCE_ACTIVITY
from qldbstream_tools.simulate.ledger import AccountTransaction, Burst
from qldbstream_tools.simulate.model import Transaction
from qldbstream_tools.simulate.redaction import RedactionPool
from qldbstream_tools.simulate.session import Document, TransactionBuilder
from qldbstream_tools.simulate.values import IonValue, base62_id, epoch_ms, money, timestamp_ms
from qldbstream_tools.simulate.workload import Workload

__all__ = ["BankBooks"]


class BankBooks:
    """What the bank holds and the ground truth of what it did; no transaction kinds."""

    def __init__(self, workload: Workload, rng: random.Random, ids: random.Random) -> None:
        workload.validate()
        self.workload = workload
        self.rng = rng
        self.ids = ids
        self.clock = epoch_ms(workload.start_time)
        self.customers: dict[str, Document] = {}
        self.accounts: dict[str, Document] = {}
        self.payments: dict[str, Document] = {}
        #: (documentId, version) -> op of every committed revision.
        self.ops: dict[tuple[str, int], str] = {}
        self.redactable = RedactionPool(self.ops)
        self.tables: dict[str, str] = {}
        self.committed: list[Transaction] = []
        self.account_transactions: dict[str, list[AccountTransaction]] = {}
        self.bursts: list[Burst] = []
        self._pending_burst: list[tuple[int, str, int]] = []
        self._burst_docs: dict[int, list[str]] = {}
        self._counter = 0
        #: accountIds with status ACTIVE, and CARD_PAYMENT documentIds not deleted (in creation order).
        self._active: list[str] = []
        self._reversible: list[str] = []

    # -- documents ---------------------------------------------------------------------------------

    def _new_doc(self, table: str, data: dict[str, IonValue]) -> Document:
        return Document(table, base62_id(self.ids), data)

    def superseded(self, doc: Document, version: int) -> None:
        """Revision ``version`` of ``doc`` is no longer the latest: redactable if it has data."""
        self.redactable.superseded(doc.table, doc.document_id, version)

    def _number(self, prefix: str, width: int) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:0{width}d}"

    def _active_account(self) -> str:
        return self.rng.choice(self._active or list(self.accounts))

    def _set_status(self, tx: TransactionBuilder, account: Document, statement: int, status: str) -> None:
        before = account.data["status"]
        tx.update(account, statement, status=status)
        account_id = account.data["accountId"]
        if before != "ACTIVE" and status == "ACTIVE":
            self._active.append(account_id)
        elif before == "ACTIVE" and status != "ACTIVE":
            self._active.remove(account_id)

    # -- ground truth ----------------------------------------------------------------------------------

    def _finish_bursts(self) -> None:
        for doc_ids in self._burst_docs.values():
            docs = [self.payments[d] for d in doc_ids]
            times = [d.data["createdAt"] for d in docs]
            self.bursts.append(
                Burst(docs[0].data["accountId"], tuple(doc_ids), epoch_ms(times[0]), epoch_ms(times[-1]))
            )

    # -- data ------------------------------------------------------------------------------------------

    def _debit(self, tx: TransactionBuilder, account: Document, amount: Decimal) -> None:
        balance = money(account.data["balance"] - amount)
        stamp = timestamp_ms(self.clock)
        k = tx.run(UPDATE_BALANCE_ACTIVITY, balance, stamp, account.data["accountId"])
        tx.update(account, k, balance=balance, lastActivityAt=stamp)

    def _transaction_doc(
        self,
        account: Document,
        kind: str,
        amount: Decimal,
        merchant: tuple[str, int] | None,
        channel: IonValue,
        counterparty: str | None = None,
    ) -> Document:
        data = bankdata.transaction(
            self._number("TX", 12), account.data, kind, amount, merchant, channel, counterparty, self.clock
        )
        doc = self._new_doc("Transactions", data)
        self.payments[doc.document_id] = doc
        if kind == "CARD_PAYMENT":
            self._reversible.append(doc.document_id)
        limit, high = self.workload.small_amount_limit, self.workload.high_value_min
        self.account_transactions[data["accountId"]].append(
            AccountTransaction(
                doc.document_id,
                data["transactionId"],
                data["accountId"],
                kind,
                amount,
                data["currency"],
                None if merchant is None else merchant[0],
                self.clock,
                small=amount < limit,
                high_value=amount >= high,
            )
        )
        return doc
