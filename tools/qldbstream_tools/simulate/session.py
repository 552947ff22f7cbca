"""A transaction being run: its statements and the one revision it commits per document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qldbstream_tools.simulate.model import DocumentWrite, RedactionRequest, Statement, Transaction
from qldbstream_tools.simulate.values import IonValue

if TYPE_CHECKING:
    from qldbstream_tools.simulate.bank import Bank

__all__ = ["Document", "TransactionBuilder"]


@dataclass(slots=True)
class Document:
    """A document of the bank as it stands (the uncommitted state while a transaction runs)."""

    table: str
    document_id: str
    data: dict[str, IonValue]
    #: Latest committed version (-1 before the first commit).
    version: int = -1
    deleted: bool = False


class TransactionBuilder:
    """A transaction being run: statements, and the coalesced write of each document."""

    def __init__(self, bank: Bank, kind: str) -> None:
        self.bank = bank
        self.kind = kind
        self.statements: list[Statement] = []
        self.writes: dict[str, tuple[Document, DocumentWrite]] = {}
        self.redactions: list[RedactionRequest] = []

    def run(self, text: str, *parameters: IonValue) -> int:
        bank = self.bank
        self.statements.append(Statement(text, tuple(parameters), bank.clock))
        bank.clock += bank.rng.randint(6, 35)
        return len(self.statements) - 1

    def insert(self, doc: Document, statement: int) -> None:
        self.writes[doc.document_id] = (doc, DocumentWrite(doc.table, doc.document_id, "insert", 0, doc.data))
        self.writes[doc.document_id][1].statements.append(statement)

    def update(self, doc: Document, statement: int, **changes: IonValue) -> None:
        doc.data = {**doc.data, **changes}
        entry = self.writes.get(doc.document_id)
        if entry is None:
            entry = (doc, DocumentWrite(doc.table, doc.document_id, "update", doc.version + 1, None))
            self.writes[doc.document_id] = entry
        entry[1].data = doc.data
        entry[1].statements.extend([statement] * len(changes))

    def delete(self, doc: Document, statement: int) -> None:
        doc.deleted = True
        self.writes[doc.document_id] = (
            doc,
            DocumentWrite(doc.table, doc.document_id, "delete", doc.version + 1, None, [statement]),
        )

    def commit(self) -> Transaction:
        bank = self.bank
        tx_time = bank.clock + bank.rng.randint(5, 30)
        commit = tx_time + bank.rng.randint(3, 20)
        bank.clock = commit
        writes = []
        for doc, write in self.writes.values():
            if doc.version >= 0:
                bank.superseded(doc, doc.version)
            doc.version = write.version
            writes.append(write)
            bank.ops[(doc.document_id, write.version)] = write.op
        system = 1 if bank.rng.random() < bank.workload.system_entry_rate else 0
        position = bank.rng.randint(0, len(writes)) if system else 0
        tx = Transaction(
            self.kind, self.statements, writes, tx_time, commit, self.redactions, system, position
        )
        bank.committed.append(tx)
        return tx
