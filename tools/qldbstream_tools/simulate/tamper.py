"""Targeted tampering, applied: find the record a :class:`Tamper` names, change the field after QLDB
hashed it (re-hashing as far as the tamper asks), and report what it must make fail.

The ``--tamper`` syntax, the targets and :func:`parse_tamper` are in
:mod:`qldbstream_tools.simulate.tamper_spec` (re-exported here); what each tamper makes fail is in
:mod:`qldbstream_tools.simulate.verdicts`.
"""

from __future__ import annotations

from amazon.ion import simpleion

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.fields import MISSING, format_path, get_path, mutate, parse_path, set_path
from qldbstream_tools.simulate.journal import Journal
from qldbstream_tools.simulate.stream import StreamRecord, rehash_block, rehash_revision
from qldbstream_tools.simulate.tamper_spec import (
    _BLOCK_ROOTS,
    _REVISION_ROOTS,
    AUTO,
    BlockTarget,
    KplTarget,
    Rehash,
    RevisionIndex,
    RevisionTarget,
    TableIndex,
    Tamper,
    parse_tamper,
)
from qldbstream_tools.simulate.values import IonValue, ion_text
from qldbstream_tools.simulate.verdicts import Failure, TamperReport, block_failures, revision_failures

__all__ = [
    "AUTO",
    "BlockTarget",
    "KplTarget",
    "Rehash",
    "RevisionIndex",
    "RevisionTarget",
    "TableIndex",
    "Tamper",
    "apply_tampers",
    "parse_tamper",
]


class _Index:
    """Finds the records a tamper names."""

    def __init__(self, records: list[StreamRecord]) -> None:
        self.blocks: dict[int, StreamRecord] = {}
        self.revisions: dict[tuple[str, int], StreamRecord] = {}
        self.ordered: list[StreamRecord] = []
        for r in records:
            if r.record_type == "BLOCK_SUMMARY" and r.sequence_no is not None:
                self.blocks[r.sequence_no] = r
            elif r.record_type == "REVISION_DETAILS" and r.document_id is not None and r.version is not None:
                self.revisions[(r.document_id, r.version)] = r
                self.ordered.append(r)

    def block(self, sequence_no: int, spec: str) -> StreamRecord:
        rec = self.blocks.get(sequence_no)
        if rec is None:
            lo, hi = min(self.blocks), max(self.blocks)
            raise ConfigurationError(f"tamper {spec!r}: no block {sequence_no} (the stream has {lo}..{hi})")
        return rec

    def revision(self, target: RevisionTarget | RevisionIndex | TableIndex, spec: str) -> StreamRecord:
        if isinstance(target, TableIndex):
            shown = [
                r
                for r in self.ordered
                if r.value["payload"]["tableInfo"]["tableName"] == target.table
                and "data" in r.value["payload"]["revision"]
            ]
            if target.index >= len(shown):
                raise ConfigurationError(
                    f"tamper {spec!r}: the stream shows the data of only {len(shown)} "
                    f"{target.table} revisions"
                )
            return shown[target.index]
        if isinstance(target, RevisionIndex):
            if target.index >= len(self.ordered):
                raise ConfigurationError(
                    f"tamper {spec!r}: the stream has only {len(self.ordered)} revisions (revision#0.."
                    f"{len(self.ordered) - 1})"
                )
            return self.ordered[target.index]
        rec = self.revisions.get((target.document_id, target.version))
        if rec is None:
            raise ConfigurationError(
                f"tamper {spec!r}: no revision {target.document_id} version {target.version} in the stream"
            )
        return rec


def apply_tampers(
    tampers: list[Tamper], records: list[StreamRecord], journal: Journal, *, aggregated: bool
) -> tuple[list[TamperReport], set[int]]:
    """Apply ``tampers`` in order to ``records`` (in place); return the reports and the blocks
    whose KPL aggregate must get a corrupt MD5 (``kpl=`` targets).
    """
    index = _Index(records)
    first, last = journal.blocks[0].sequence_no, journal.blocks[-1].sequence_no
    reports: list[TamperReport] = []
    corrupt: set[int] = set()
    for tamper in tampers:
        spec = tamper.spec
        t = tamper.target
        if isinstance(t, KplTarget):
            if not aggregated:
                raise ConfigurationError(f"tamper {spec!r}: kpl= needs aggregated delivery")
            if tamper.field != "md5" or tamper.value is not AUTO or tamper.rehash != "none":
                raise ConfigurationError(f"tamper {spec!r}: the only KPL field is md5 (kpl=N:md5)")
            index.block(t.sequence_no, spec)
            corrupt.add(t.sequence_no)
            reports.append(
                TamperReport(
                    spec,
                    f"KPL aggregate of block {t.sequence_no}",
                    "md5",
                    "none",
                    "",
                    "",
                    (Failure("V1", t.sequence_no),),
                    (t.sequence_no,),
                    ("the aggregate's user records cannot be read: their checks and links are unverifiable",),
                )
            )
            continue
        if isinstance(t, BlockTarget):
            reports.append(
                _tamper_block(tamper, index.block(t.sequence_no, spec), index, journal, first, last)
            )
        else:
            reports.append(_tamper_revision(tamper, index.revision(t, spec), index, first, last))
    return reports, corrupt


def _new_value(tamper: Tamper, old: IonValue, spec: str) -> IonValue:
    if tamper.value is not AUTO:
        if old is not MISSING and simpleion.dumps(old) == simpleion.dumps(tamper.value):
            raise ConfigurationError(f"tamper {spec!r}: {tamper.field} already has that value")
        return tamper.value
    if old is MISSING:
        raise ConfigurationError(
            f"tamper {spec!r}: the record has no field {tamper.field} (=ION_TEXT adds it)"
        )
    if isinstance(old, dict | list):
        raise ConfigurationError(f"tamper {spec!r}: {tamper.field} is a container: name a field inside it")
    return mutate(old)


def _tamper_revision(tamper: Tamper, rec: StreamRecord, index: _Index, first: int, last: int) -> TamperReport:
    spec = tamper.spec
    path = parse_path(tamper.field, spec)
    if path[0] == "payload" and len(path) > 1:
        path = path[1:]
    if path[0] == "revision" and len(path) > 1:
        path = path[1:]
    root = path[0]
    if root not in _REVISION_ROOTS:
        raise ConfigurationError(
            f"tamper {spec!r}: a revision's fields are {', '.join(_REVISION_ROOTS)} (got {root!r})"
        )
    revision = rec.value["payload"]["revision"]
    if root == "data" and "data" not in revision:
        kind = "redacted (it has dataHash)" if "dataHash" in revision else "a delete (it has no data)"
        raise ConfigurationError(f"tamper {spec!r}: {rec.describe()} is {kind}")
    if root == "dataHash" and "dataHash" not in revision:
        raise ConfigurationError(f"tamper {spec!r}: {rec.describe()} is not redacted (it has no dataHash)")
    if tamper.rehash != "none" and root not in ("data", "dataHash", "metadata"):
        raise ConfigurationError(f"tamper {spec!r}: +rehash applies to data, dataHash and metadata")
    full = ["payload", *path] if root == "tableInfo" else ["payload", "revision", *path]
    old = get_path(rec.value, full)
    if old is MISSING and tamper.value is AUTO and root == "data":
        table = rec.value["payload"]["tableInfo"]["tableName"]
        raise ConfigurationError(
            f"tamper {spec!r}: {rec.describe()} (table {table}) has no field {format_path(path)}; its data "
            f"fields are {', '.join(revision['data'])} (TABLE#N picks the N-th revision of a table)"
        )
    new = _new_value(tamper, old, spec)
    rec.replace_value(set_path(rec.value, full, new))
    old_meta = revision["metadata"]
    new_meta = rec.value["payload"]["revision"]["metadata"]
    identity_changed = any(old_meta.get(k) != new_meta.get(k) for k in ("id", "txId"))
    n = rec.sequence_no
    assert n is not None and rec.document_id is not None and rec.version is not None
    if tamper.rehash != "none":
        rehash_revision(rec, index.blocks[n], tamper.rehash == "block")
    failures, notes = revision_failures(
        root,
        rehash=tamper.rehash,
        sequence_no=n,
        document_id=rec.document_id,
        version=rec.version,
        identity_changed=identity_changed,
        has_next=n < last,
    )
    return TamperReport(
        spec,
        rec.describe(),
        format_path(path),
        tamper.rehash,
        "" if old is MISSING else ion_text(old),
        ion_text(new),
        tuple(failures),
        notes=tuple(notes),
    )


def _tamper_block(
    tamper: Tamper, rec: StreamRecord, index: _Index, journal: Journal, first: int, last: int
) -> TamperReport:
    spec = tamper.spec
    path = parse_path(tamper.field, spec)
    if path[0] == "payload" and len(path) > 1:
        path = path[1:]
    root = path[0]
    if root == "blockAddress":
        raise ConfigurationError(
            f"tamper {spec!r}: blockAddress is the block's identity; it cannot be tampered"
        )
    if root not in _BLOCK_ROOTS:
        raise ConfigurationError(
            f"tamper {spec!r}: a block's fields are {', '.join(_BLOCK_ROOTS)} (got {root!r})"
        )
    rehashable = root in ("transactionInfo", "redactionInfo") or (
        root == "revisionSummaries" and path[-1] == "hash"
    )
    if tamper.rehash == "revision" or (tamper.rehash == "block" and not rehashable):
        raise ConfigurationError(
            f"tamper {spec!r}: blocks take +rehash-block only, for transactionInfo, redactionInfo and "
            "revisionSummaries[i].hash"
        )
    full = ["payload", *path]
    old = get_path(rec.value, full)
    if old is MISSING and (tamper.value is AUTO or not isinstance(get_path(rec.value, full[:-1]), dict)):
        raise ConfigurationError(f"tamper {spec!r}: {rec.describe()} has no field {tamper.field}")
    if root in ("transactionInfo", "redactionInfo") and (isinstance(old, dict | list) or old is MISSING):
        raise ConfigurationError(f"tamper {spec!r}: name an existing scalar field inside {root}")
    n = rec.sequence_no
    assert n is not None
    block = journal.block(n)
    summary_revision = None
    if root == "revisionSummaries":
        if len(path) < 3 or not isinstance(path[1], int) or path[2] not in ("hash", "documentId"):
            raise ConfigurationError(
                f"tamper {spec!r}: name revisionSummaries[i].hash or revisionSummaries[i].documentId"
            )
        entry = rec.value["payload"]["revisionSummaries"][path[1]]
        if "documentId" in entry:
            doc = str(entry["documentId"])
            summary_revision = next(
                (d, v) for d, v in ((r.document_id, r.version) for r in block.revisions) if d == doc
            )
        elif path[2] == "documentId":
            raise ConfigurationError(
                f"tamper {spec!r}: revisionSummaries[{path[1]}] is a system entry (no documentId)"
            )
    before_statements = rec.value["payload"]["transactionInfo"]["statements"]
    new = _new_value(tamper, old, spec)
    rec.replace_value(set_path(rec.value, full, new))
    after_statements = rec.value["payload"]["transactionInfo"]["statements"]
    changed = [
        (i, block.has_parameters(i))
        for i, (b, a) in enumerate(zip(before_statements, after_statements, strict=True))
        if b["statement"] != a["statement"] or b["statementDigest"] != a["statementDigest"]
    ]
    if tamper.rehash == "block":
        rehash_block(rec)
    failures, notes = block_failures(
        path,
        rehash=tamper.rehash,
        sequence_no=n,
        has_previous=n > first,
        has_next=n < last,
        changed_statements=changed,
        summary_revision=summary_revision,
        block_revisions=[(r.document_id, r.version) for r in block.revisions],
    )
    return TamperReport(
        spec,
        rec.describe(),
        format_path(path),
        tamper.rehash,
        "" if old is MISSING else ion_text(old),
        ion_text(new),
        tuple(failures),
        notes=tuple(notes),
    )
