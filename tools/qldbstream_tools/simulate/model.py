"""What the workload hands the journal: committed transactions, their statements and writes.

A :class:`Transaction` is one QLDB transaction as an application ran it: the PartiQL statements
in order (text with ``?`` placeholders and the parameter values sent), and the final state of
every document it wrote. QLDB turns it into one journal block (:mod:`qldbstream_tools.simulate.journal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qldbstream_tools.simulate.values import IonValue

__all__ = ["DocumentWrite", "Op", "RedactionRequest", "Statement", "Transaction"]

#: What a committed revision did to its document.
Op = Literal["insert", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One PartiQL statement: its text, the parameter values bound to its ``?``, its start time."""

    text: str
    parameters: tuple[IonValue, ...]
    start_ms: int


@dataclass(slots=True)
class DocumentWrite:
    """The one revision a transaction commits for a document (its final state in the transaction).

    ``statements`` lists, for ``transactionInfo.documents``, the index of each statement that
    wrote the document, once per ``SET`` target (one UPDATE of two fields gives ``[k, k]``).
    """

    table: str
    document_id: str
    op: Op
    version: int
    #: The document after the transaction; ``None`` for a delete.
    data: IonValue | None
    statements: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RedactionRequest:
    """``redact_revision`` of one earlier revision, identified as QLDB identifies it."""

    table: str
    document_id: str
    version: int


@dataclass(slots=True)
class Transaction:
    """One committed QLDB transaction of the workload."""

    kind: str
    statements: list[Statement]
    writes: list[DocumentWrite]
    #: ``metadata.txTime`` of its revisions.
    tx_time_ms: int
    #: ``blockTimestamp``: the commit, a few ms after ``txTime``.
    commit_ms: int
    redactions: list[RedactionRequest] = field(default_factory=list)
    #: Internal system revisions (hash only, no documentId) the block also records.
    system_revisions: int = 0
    #: Position of the first system revision among ``revisionSummaries``.
    system_position: int = 0
