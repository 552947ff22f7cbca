"""The workload: a small bank running PartiQL transactions against three tables.

Tables ``Customers`` (name, ssn, card_number, email, address, ...), ``Accounts`` (accountId,
customerId, balance, currency, status, ...) and ``Transactions`` (accountId, amount, currency,
merchant, type, channel, ...). Every statement is written the way an application using a QLDB
driver writes it, with ``?`` placeholders and the values it binds, plus a few statements with
literals and no parameters (so V6 can be checked from the stream alone).

Transaction kinds (weights in :class:`WorkloadMix`):

* ``open_account`` - a new customer (or an existing one, by e-mail lookup) opens an account with
  an initial deposit: INSERT then UPDATE of the same account, which QLDB commits as *one*
  revision (version 0) with ``documents.<id>.statements`` ``[k, k+2, k+2]``;
* ``card_payment``, ``deposit``, ``transfer`` (one INSERT with a *list* parameter creating two
  documents), ``high_value`` (a wire of at least ``high_value_min`` plus a literal flag update);
* ``small_burst`` - plants a burst: 5-8 card payments under ``small_amount_limit`` on one account
  within a few minutes, interleaved with other traffic (what a fraud rule looks for);
* ``customer_update`` - new e-mail and address (older customer revisions become redactable);
* ``account_review`` - a SELECT and an UPDATE with literals only (freeze / unfreeze);
* ``delete`` - reverse a card payment: DELETE the ``Transactions`` document (a revision with no
  ``data``) and refund the account;
* ``redaction`` - ``EXEC redact_revision ?, ?, ?`` of a superseded revision (customers first:
  that is where the PII is).

Normal card payments are at least ``small_amount_limit``, so every amount below it belongs to a
planted burst.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from decimal import Decimal

from qldbstream_tools.simulate import bankdata
from qldbstream_tools.simulate.bankdata import (
    BURST_MERCHANTS,
    CHANNELS,
    CURRENCIES,
    DELETE_TRANSACTION,
    INSERT_ACCOUNT,
    INSERT_CUSTOMER,
    INSERT_TRANSACTION,
    MERCHANTS,
    REDACT_REVISION,
    SELECT_BALANCE,
    SELECT_CUSTOMER_BY_EMAIL,
    SELECT_TWO_ACCOUNTS,
    UPDATE_BALANCE,
    UPDATE_BALANCE_ACTIVITY,
    UPDATE_CUSTOMER_CONTACT,
)
from qldbstream_tools.simulate.books import BankBooks
from qldbstream_tools.simulate.model import RedactionRequest, Transaction
from qldbstream_tools.simulate.session import TransactionBuilder
from qldbstream_tools.simulate.values import (
    base62_id,
    money,
    symbol,
    timestamp_ms,
)
from qldbstream_tools.simulate.workload import TABLES

__all__ = ["Bank"]


class Bank(BankBooks):
    """Runs a :class:`Workload` and records the ground truth of what it did."""

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> list[Transaction]:
        """Every committed transaction, in commit order (DDL first, explicit redactions last)."""
        w = self.workload
        if w.ddl:
            for table, column in (
                ("Customers", "customerId"),
                ("Accounts", "accountId"),
                ("Transactions", "accountId"),
            ):
                self._ddl(table, column)
        else:
            self.tables = {t: base62_id(self.ids) for t in TABLES}
        weights = w.mix.weights()
        # Exact counts replace the mix's weight: spread over the steps after the bootstrap; what
        # does not fit there (or finds nothing eligible in time) is owed and runs as soon as it can.
        forced: dict[str, list[int]] = {}
        owed: dict[str, int] = {}
        slots = range(min(3, w.transactions), w.transactions)
        for kind, count in (("delete", w.deletes), ("redaction", w.redactions)):
            if count is not None:
                weights[kind] = 0.0
                forced[kind] = sorted(self.rng.sample(slots, min(count, len(slots))))
                owed[kind] = count - len(forced[kind])
        kinds = list(weights)
        cumulative = [weights[k] for k in kinds]
        bootstrap = min(3, w.transactions)
        for step in range(w.transactions):
            following = self.clock + int(self.rng.expovariate(1.0 / w.mean_gap_ms)) + 1
            for kind, steps in forced.items():
                while steps and steps[0] == step:
                    steps.pop(0)
                    owed[kind] += 1
            if self._pending_burst and self._pending_burst[0][0] <= following and step >= bootstrap:
                # a planted burst payment runs at its planned time, between the other traffic
                due, account_id, burst = self._pending_burst.pop(0)
                self.clock = max(self.clock + 1, due)
                self._card_payment(account_id, small=True, burst=burst)
                continue
            self.clock = following
            if step < bootstrap or not self.accounts:
                self._open_account()
                continue
            done = next((kind for kind, n in owed.items() if n and self._try(kind)), None)
            if done is not None:
                owed[done] -= 1
                continue
            kind = self.rng.choices(kinds, weights=cumulative)[0]
            if not self._try(kind):
                self._card_payment(self._active_account())
        # Forced deletes/redactions that found nothing eligible in time run after the workload.
        for kind, n in owed.items():
            for _ in range(n):
                self.clock += int(self.rng.expovariate(1.0 / w.mean_gap_ms)) + 1
                if not self._try(kind):
                    self._card_payment(self._active_account())
                    self.clock += 1000
                    self._try(kind)
        for document_id, version in w.redact:
            self.clock += int(self.rng.expovariate(1.0 / w.mean_gap_ms)) + 1
            self._redact(self.redactable.check(document_id, version))
        self._finish_bursts()
        return self.committed

    def _try(self, kind: str) -> bool:
        """Run one transaction of ``kind``; False when nothing is eligible for it right now."""
        actions: Mapping[str, Callable[[], bool]] = {
            "open_account": self._open_account,
            "card_payment": lambda: self._card_payment(self._active_account()),
            "deposit": self._deposit,
            "transfer": self._transfer,
            "small_burst": self._plan_burst,
            "high_value": self._high_value,
            "customer_update": self._customer_update,
            "account_review": self._account_review,
            "delete": self._delete,
            "redaction": self._random_redaction,
        }
        return actions[kind]()

    def _ddl(self, table: str, column: str) -> None:
        tx = TransactionBuilder(self, "ddl")
        tx.run(f"CREATE TABLE {table}")
        tx.run(f"CREATE INDEX ON {table} ({column})")
        self.tables[table] = base62_id(self.ids)
        committed = tx.commit()
        committed.system_revisions = 2
        committed.system_position = 0
        self.clock += self.rng.randint(200, 900)

    # -- transaction kinds -------------------------------------------------------------------------

    def _open_account(self) -> bool:
        rng = self.rng
        tx = TransactionBuilder(self, "open_account")
        if self.customers and rng.random() < 0.3:
            customer = self.customers[rng.choice(list(self.customers))]
            tx.run(SELECT_CUSTOMER_BY_EMAIL, customer.data["email"])
        else:
            customer = self._new_doc(
                "Customers", bankdata.customer(self.rng, self._number("CU", 8), self.clock)
            )
            self.customers[customer.data["customerId"]] = customer
            tx.insert(customer, tx.run(INSERT_CUSTOMER, customer.data))
        now = timestamp_ms(self.clock)
        account = self._new_doc(
            "Accounts",
            {
                "accountId": self._number("AC", 10),
                "customerId": customer.data["customerId"],
                "type": rng.choice(("CHECKING", "CHECKING", "SAVINGS")),
                "currency": rng.choice(CURRENCIES),
                "balance": money("0.00"),
                "overdraftLimit": rng.choice((0, 250, 500, 1000)),
                "status": "ACTIVE",
                "openedAt": now,
                "lastActivityAt": now,
            },
        )
        account_id = account.data["accountId"]
        self.accounts[account_id] = account
        self._active.append(account_id)
        self.account_transactions[account_id] = []
        tx.insert(account, tx.run(INSERT_ACCOUNT, account.data))
        amount = money(Decimal(rng.randint(2000, 500_000)) / 100)
        deposit = self._transaction_doc(account, "DEPOSIT", amount, None, symbol("branch"))
        tx.insert(deposit, tx.run(INSERT_TRANSACTION, deposit.data))
        stamp = timestamp_ms(self.clock)
        tx.update(
            account,
            tx.run(UPDATE_BALANCE_ACTIVITY, amount, stamp, account_id),
            balance=amount,
            lastActivityAt=stamp,
        )
        tx.commit()
        return True

    def _card_payment(self, account_id: str, *, small: bool = False, burst: int | None = None) -> bool:
        rng = self.rng
        account = self.accounts[account_id]
        if small:
            amount = money(Decimal(rng.randint(50, int(self.workload.small_amount_limit * 100) - 1)) / 100)
            merchant = rng.choice(BURST_MERCHANTS)
        else:
            raw = Decimal(str(round(rng.lognormvariate(3.4, 0.9), 2)))
            amount = money(max(raw, self.workload.small_amount_limit))
            merchant = rng.choice(MERCHANTS)
        tx = TransactionBuilder(self, "small_payment" if small else "card_payment")
        tx.run(SELECT_BALANCE, account_id)
        doc = self._transaction_doc(account, "CARD_PAYMENT", amount, merchant, symbol(rng.choice(CHANNELS)))
        tx.insert(doc, tx.run(INSERT_TRANSACTION, doc.data))
        self._debit(tx, account, amount)
        tx.commit()
        if burst is not None:
            self._burst_docs.setdefault(burst, []).append(doc.document_id)
        return True

    def _deposit(self) -> bool:
        account = self.accounts[self._active_account()]
        amount = money(Decimal(self.rng.randint(5000, 400_000)) / 100)
        tx = TransactionBuilder(self, "deposit")
        doc = self._transaction_doc(account, "DEPOSIT", amount, None, symbol("mobile"))
        tx.insert(doc, tx.run(INSERT_TRANSACTION, doc.data))
        balance = money(account.data["balance"] + amount)
        tx.update(account, tx.run(UPDATE_BALANCE, balance, account.data["accountId"]), balance=balance)
        tx.commit()
        return True

    def _transfer(self) -> bool:
        if len(self._active) < 2:
            return False
        src_id, dst_id = self.rng.sample(self._active, 2)
        src, dst = self.accounts[src_id], self.accounts[dst_id]
        amount = money(Decimal(self.rng.randint(1000, 200_000)) / 100)
        tx = TransactionBuilder(self, "transfer")
        tx.run(SELECT_TWO_ACCOUNTS, src_id, dst_id)
        out = self._transaction_doc(src, "TRANSFER_OUT", amount, None, symbol("online"), counterparty=dst_id)
        into = self._transaction_doc(dst, "TRANSFER_IN", amount, None, symbol("online"), counterparty=src_id)
        k = tx.run(INSERT_TRANSACTION, [out.data, into.data])
        tx.insert(out, k)
        tx.insert(into, k)
        for doc, delta in ((src, -amount), (dst, amount)):
            balance = money(doc.data["balance"] + delta)
            tx.update(doc, tx.run(UPDATE_BALANCE, balance, doc.data["accountId"]), balance=balance)
        tx.commit()
        return True

    def _high_value(self) -> bool:
        rng = self.rng
        account_id = self._active_account()
        account = self.accounts[account_id]
        low = int(self.workload.high_value_min)
        amount = money(Decimal(rng.randint(low * 100, low * 2500)) / 100)
        tx = TransactionBuilder(self, "high_value")
        tx.run(SELECT_BALANCE, account_id)
        doc = self._transaction_doc(
            account, "WIRE_OUT", amount, None, symbol("online"), counterparty=f"GB{rng.randint(10, 99)}FAKE"
        )
        tx.insert(doc, tx.run(INSERT_TRANSACTION, doc.data))
        self._debit(tx, account, amount)
        # PartiQL with literals and no parameters on purpose: V6 is checkable from the stream alone.
        flag = tx.run(f"UPDATE Accounts AS a SET a.reviewRequired = true WHERE a.accountId = '{account_id}'")  # noqa: S608
        tx.update(account, flag, reviewRequired=True)
        tx.commit()
        return True

    def _plan_burst(self) -> bool:
        rng = self.rng
        account_id = self._active_account()
        size = rng.randint(*self.workload.burst_size)
        window = self.workload.burst_window_ms
        offsets = sorted(rng.randint(min(1000, window // 2), max(1, window - 1000)) for _ in range(size - 1))
        burst = len(self._burst_docs)
        self._card_payment(account_id, small=True, burst=burst)
        start = self.clock
        self._pending_burst.extend((start + off, account_id, burst) for off in offsets)
        self._pending_burst.sort()
        return True

    def _customer_update(self) -> bool:
        rng = self.rng
        customer = self.customers[rng.choice(list(self.customers))]
        first, last = customer.data["name"].split(" ", 1)
        email = f"{first}.{last}.{rng.randint(100, 999)}@example.org".lower()
        address = bankdata.address(self.rng)
        tx = TransactionBuilder(self, "customer_update")
        k = tx.run(UPDATE_CUSTOMER_CONTACT, email, address, customer.data["customerId"])
        tx.update(customer, k, email=email, address=address)
        tx.commit()
        return True

    def _account_review(self) -> bool:
        frozen = [a for a, d in self.accounts.items() if d.data["status"] == "FROZEN"]
        if frozen and self.rng.random() < 0.4:
            account_id, status = self.rng.choice(frozen), "ACTIVE"
        else:
            if self._burst_docs and self.rng.random() < 0.5:
                latest = self._burst_docs[len(self._burst_docs) - 1]
                account_id = self.payments[latest[0]].data["accountId"]
            else:
                account_id = self._active_account()
            status = "FROZEN"
        account = self.accounts[account_id]
        tx = TransactionBuilder(self, "account_review")
        # Literals, no parameters (V6 checkable from the stream alone).
        tx.run(
            f"SELECT COUNT(*) FROM Transactions AS t WHERE t.accountId = '{account_id}' "  # noqa: S608
            f"AND t.amount < {self.workload.small_amount_limit}"
        )
        k = tx.run(f"UPDATE Accounts AS a SET a.status = '{status}' WHERE a.accountId = '{account_id}'")  # noqa: S608
        self._set_status(tx, account, k, status)
        tx.commit()
        return True

    def _delete(self) -> bool:
        if not self._reversible:
            return False
        i = self.rng.randrange(len(self._reversible))
        self._reversible[i], self._reversible[-1] = self._reversible[-1], self._reversible[i]
        doc = self.payments[self._reversible.pop()]
        account = self.accounts[doc.data["accountId"]]
        tx = TransactionBuilder(self, "delete")
        tx.delete(doc, tx.run(DELETE_TRANSACTION, doc.data["transactionId"]))
        balance = money(account.data["balance"] + doc.data["amount"])
        tx.update(account, tx.run(UPDATE_BALANCE, balance, account.data["accountId"]), balance=balance)
        tx.commit()
        facts = self.account_transactions[account.data["accountId"]]
        for i, fact in enumerate(facts):
            if fact.document_id == doc.document_id:
                facts[i] = replace(fact, reversed=True)
        return True

    # -- redaction -----------------------------------------------------------------------------------

    def _random_redaction(self) -> bool:
        request = self.redactable.choose(self.rng)
        if request is None:
            return False
        self._redact(request)
        return True

    def _redact(self, request: RedactionRequest) -> None:
        tx = TransactionBuilder(self, "redaction")
        tx.run(REDACT_REVISION)  # the journal binds blockAddress, tableId and documentId
        tx.redactions.append(request)
        self.redactable.take(request)
        committed = tx.commit()
        committed.system_revisions = 1
        committed.system_position = 0
