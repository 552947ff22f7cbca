"""Expected verdicts: which checks (V1-V9 of qldb-stream-format.md §5) must fail, for which record.

A tamper changes one field of one record *after* QLDB computed the hashes, so a verifier must
notice. These are the rules this module applies (``n`` is the block of the tampered record,
``R`` its revision ``(documentId, version)``, ``d`` the documentId of a summary entry; a check
on "n+1" exists only when block n+1 is in the stream - otherwise the tamper goes unnoticed and
a note says so). Every check not listed passes, for every record.

Revision record (REVISION_DETAILS of R in block n):

=============================  ===============  =========================  =========================
field                          as is            ``+rehash``                ``+rehash-block``
=============================  ===============  =========================  =========================
``data.*``, ``dataHash``       V2(R)            V4(n)                      V9(n+1)
``metadata.version|txTime``    V2(R)            V4(n)                      V9(n+1)
``metadata.id|txId``           V2(R), V3(n,d)   V3(n,d), V4(n)             V3(n,d), V9(n+1)
``hash``                       V2(R), V3(n,d)   -                          -
``blockAddress.*``             V3(n,d)          -                          -
``tableInfo.*``                nothing          -                          -
=============================  ===============  =========================  =========================

* V4 reads ``revisionSummaries`` (in the BLOCK_SUMMARY), not ``revision.hash``: tampering only
  a revision's ``hash`` fails V2 (it no longer matches its content) and V3 (it no longer
  matches its summary entry), while V4 still passes. V4 fails when the *summary* entry changes.
* ``+rehash`` models a forger who recomputes the revision hash and patches the summary entry:
  V2 and V3 pass again, the Merkle root no longer matches ``entriesHashList[1]`` (V4).
  ``+rehash-block`` also recomputes ``entriesHashList``, ``entriesHash`` and ``blockHash``:
  only the chain (V9, next block) shows it; in the last block nothing does (only a digest, V10).
* ``tableInfo`` is covered by no hash and V3 does not compare it: no check fails.

Block record (BLOCK_SUMMARY of block n):

=================================================  ==========================  ===================
field                                              as is                       ``+rehash-block``
=================================================  ==========================  ===================
``blockHash``                                      V8(n), V9(n+1)              -
``previousBlockHash``                              V8(n), V9(n)                -
``entriesHash``                                    V7(n), V8(n)                -
``entriesHashList[1]`` (revisions root)            V4(n), V7(n)                -
``entriesHashList[3|4]`` (txInfo / redaction)      V5(n), V7(n)                -
``entriesHashList[0|2]`` (opaque)                  V7(n)                       -
``transactionInfo.statements[i].statement``        V5(n), V6(n,i)              V6(n,i), V9(n+1)
``transactionInfo.statements[i].statementDigest``  V5(n), V6(n,i)              V6(n,i), V9(n+1)
``transactionInfo.*`` (any other field)            V5(n)                       V9(n+1)
``redactionInfo.*``                                V5(n)                       V9(n+1)
``revisionSummaries[i].hash``                      V4(n), V3(n,d_i)            V3(n,d_i), V9(n+1)
``revisionSummaries[i].documentId``                V3(n,d_i)                   -
``transactionId``                                  V3(n,d) for each revision   -
``blockTimestamp``                                 nothing                     -
=================================================  ==========================  ===================

* V6 on a statement *with* parameters can only be checked when the parameters are known out of
  band (:attr:`qldbstream_tools.simulate.ledger.Ledger.statement_parameters`); such failures carry
  ``requiresParameters: true``. Statements without parameters are checkable from the stream.
* V3 is anchored on the summary entry; for a hash-only (system) entry there is nothing to join,
  so only V4 fails when its hash changes.
* ``blockTimestamp`` (and ``transactionId`` for a block without user revisions) is covered by
  no hash a consumer can recompute: no check fails.

Aggregate (``kpl=n:md5``): V1 fails for the Kinesis record that carries block n; the block and
its revisions cannot be read, so their checks and the links n and n+1 are *unverifiable*.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHECKS", "ExpectedVerdicts", "Failure", "TamperReport", "block_failures", "revision_failures"]

CHECKS: dict[str, str] = {
    "V1": "KPL integrity: the magic is present and MD5(protobuf) equals the trailer",
    "V2": "revision.hash = dot(H(metadata), H(data)); redacted: dot(H(metadata), dataHash); "
    "deleted: H(metadata) (inference V2b)",
    "V3": "each revisionSummaries entry with a documentId has a REVISION_DETAILS with the same hash, "
    "metadata.id = documentId, the same blockAddress and metadata.txId = transactionId",
    "V4": "merkle(revisionSummaries[*].hash) is in entriesHashList",
    "V5": "H(transactionInfo), and H(redactionInfo) when present, are in entriesHashList",
    "V6": "statementDigest = fold(dot, [H(statement as an Ion string), H(p1), ..., H(pn)])",
    "V7": "entriesHash = merkle(entriesHashList)",
    "V8": "blockHash = dot(entriesHash, previousBlockHash)",
    "V9": "previousBlockHash of block n = blockHash of block n-1 (same strand)",
}
_SUBJECT = {
    "V1": "kinesisRecord",
    "V2": "revision",
    "V3": "revisionSummary",
    "V4": "block",
    "V5": "block",
    "V6": "statement",
    "V7": "block",
    "V8": "block",
    "V9": "link",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One check that must fail, and the record (or link, statement, Kinesis record) it is about.

    ``sequence_no`` is the block; for V9 the *later* block of the link ``sequence_no - 1 ->
    sequence_no``; for V1 the block the corrupt aggregate carries. V2/V3 name the revision
    ``(document_id, version)``; V6 the ``statement`` index.
    """

    check: str
    sequence_no: int
    document_id: str | None = None
    version: int | None = None
    statement: int | None = None
    requires_parameters: bool = False

    @property
    def subject(self) -> str:
        return _SUBJECT[self.check]

    def sort_key(self) -> tuple[int, int, str, int, int]:
        return (
            int(self.check[1:]),
            self.sequence_no,
            self.document_id or "",
            -1 if self.version is None else self.version,
            -1 if self.statement is None else self.statement,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "subject": self.subject, "sequenceNo": self.sequence_no}
        if self.check == "V9":
            out["previousSequenceNo"] = self.sequence_no - 1
        if self.document_id is not None:
            out["documentId"] = self.document_id
        if self.version is not None:
            out["version"] = self.version
        if self.statement is not None:
            out["statement"] = self.statement
            out["requiresParameters"] = self.requires_parameters
        return out


@dataclass(frozen=True, slots=True)
class TamperReport:
    """What one tamper changed and which checks it makes fail."""

    spec: str
    record: str
    field: str
    rehash: str
    before: str
    after: str
    failures: tuple[Failure, ...]
    #: Blocks whose records cannot be read at all (a corrupt aggregate).
    unreadable: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "record": self.record,
            "field": self.field,
            "rehash": self.rehash,
            "before": self.before,
            "after": self.after,
            "failures": [f.to_json() for f in self.failures],
            "unreadableBlocks": list(self.unreadable),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class ExpectedVerdicts:
    """All expected failures of a simulated stream; every check not listed passes."""

    first_sequence_no: int
    last_sequence_no: int
    blocks: int
    revisions: int
    statements: int
    tampers: tuple[TamperReport, ...] = ()
    failures: tuple[Failure, ...] = field(default=())
    unreadable: tuple[int, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        first: int,
        last: int,
        blocks: int,
        revisions: int,
        statements: int,
        tampers: Iterable[TamperReport],
    ) -> ExpectedVerdicts:
        reports = tuple(tampers)
        failures = {f for r in reports for f in r.failures}
        unreadable = sorted({b for r in reports for b in r.unreadable})
        return cls(
            first,
            last,
            blocks,
            revisions,
            statements,
            reports,
            tuple(sorted(failures, key=Failure.sort_key)),
            tuple(unreadable),
        )

    @property
    def clean(self) -> bool:
        """True when every check passes for every record."""
        return not self.failures and not self.unreadable

    def failing(self, check: str) -> list[Failure]:
        """The expected failures of one check."""
        return [f for f in self.failures if f.check == check]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "qldbstream.simulate.expected-verdicts/1",
            "checks": CHECKS,
            "stream": {
                "firstSequenceNo": self.first_sequence_no,
                "lastSequenceNo": self.last_sequence_no,
                "blocks": self.blocks,
                "revisions": self.revisions,
                "statements": self.statements,
            },
            "rule": "every check not listed under failures passes for every record; "
            "V9 is checkable for every link after the first block; V10 needs the QLDB API",
            "failures": [f.to_json() for f in self.failures],
            "unreadableBlocks": list(self.unreadable),
            "tampers": [t.to_json() for t in self.tampers],
        }


def _chain(failures: list[Failure], notes: list[str], sequence_no: int, has_next: bool) -> None:
    """A recomputed blockHash shows only in the next block's previousBlockHash (V9)."""
    if has_next:
        failures.append(Failure("V9", sequence_no + 1))
    else:
        notes.append(
            f"block {sequence_no} is the last block of the stream: a consistent re-hash is not detectable "
            "from the stream alone (only a ledger digest, V10, would show it)"
        )


def revision_failures(
    root: str,
    *,
    rehash: str,
    sequence_no: int,
    document_id: str,
    version: int,
    identity_changed: bool,
    has_next: bool,
) -> tuple[list[Failure], list[str]]:
    """Expected failures for a tamper of ``root`` (``data``, ``metadata``, ...) in a revision record.

    ``identity_changed``: the tamper changed ``metadata.id`` or ``metadata.txId`` (what V3 joins on).
    """
    failures: list[Failure] = []
    notes: list[str] = []
    n, d, v = sequence_no, document_id, version
    if root in ("data", "dataHash", "metadata"):
        if rehash == "none":
            failures.append(Failure("V2", n, d, v))
        if root == "metadata" and identity_changed:
            failures.append(Failure("V3", n, d, v))
        if rehash == "revision":
            failures.append(Failure("V4", n))
        elif rehash == "block":
            _chain(failures, notes, n, has_next)
    elif root == "hash":
        failures += [Failure("V2", n, d, v), Failure("V3", n, d, v)]
    elif root == "blockAddress":
        failures.append(Failure("V3", n, d, v))
    elif root == "tableInfo":
        notes.append("tableInfo is covered by no hash and V3 does not compare it: no check fails")
    else:  # pragma: no cover - tamper.py validates roots first
        raise ValueError(f"no rule for revision field {root}")
    return failures, notes


def block_failures(
    path: list[str | int],
    *,
    rehash: str,
    sequence_no: int,
    has_previous: bool,
    has_next: bool,
    changed_statements: list[tuple[int, bool]],
    summary_revision: tuple[str, int] | None,
    block_revisions: list[tuple[str, int]],
) -> tuple[list[Failure], list[str]]:
    """Expected failures for a tamper at ``path`` (below ``payload``) of block ``sequence_no``.

    ``changed_statements``: ``(index, has_parameters)`` of statements whose text or digest changed.
    ``summary_revision``: for ``revisionSummaries[i]``, the revision the entry names (``None`` for
    a system entry). ``block_revisions``: every user revision of the block.
    """
    failures: list[Failure] = []
    notes: list[str] = []
    n = sequence_no
    root = path[0]
    if root == "blockHash":
        failures.append(Failure("V8", n))
        if has_next:
            failures.append(Failure("V9", n + 1))
    elif root == "previousBlockHash":
        failures.append(Failure("V8", n))
        if has_previous:
            failures.append(Failure("V9", n))
    elif root == "entriesHash":
        failures += [Failure("V7", n), Failure("V8", n)]
    elif root == "entriesHashList":
        failures.append(Failure("V7", n))
        position = path[1] if len(path) > 1 else None
        if position == 1:
            failures.append(Failure("V4", n))
        elif position in (3, 4):
            failures.append(Failure("V5", n))
        elif position is None:
            raise ValueError("name one entry: entriesHashList[k]")
    elif root in ("transactionInfo", "redactionInfo"):
        if rehash == "none":
            failures.append(Failure("V5", n))
        else:
            _chain(failures, notes, n, has_next)
        failures += [Failure("V6", n, statement=i, requires_parameters=p) for i, p in changed_statements]
    elif root == "revisionSummaries":
        leaf = path[2] if len(path) > 2 else None
        if summary_revision is not None:
            failures.append(Failure("V3", n, *summary_revision))
        if leaf == "hash":
            if rehash == "none":
                failures.append(Failure("V4", n))
            else:
                _chain(failures, notes, n, has_next)
        elif summary_revision is None:
            notes.append("a system (hash-only) summary entry is joined to no revision: no check fails")
    elif root == "transactionId":
        failures += [Failure("V3", n, d, v) for d, v in block_revisions]
        if not block_revisions:
            notes.append(
                "transactionId is covered by no hash and the block has no user revision: no check fails"
            )
    elif root == "blockTimestamp":
        notes.append("blockTimestamp is covered by no hash a consumer can recompute: no check fails")
    else:  # pragma: no cover - tamper.py validates roots first
        raise ValueError(f"no rule for block field {root}")
    return failures, notes
