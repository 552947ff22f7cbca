"""Which archived QLDB shape a value read from a file is, and what it holds for ``verify``.

Recognised from the value's fields (JSON or Ion alike), never from the file name:

* a **journal block** (an S3 export's blocks) or a **revision struct** (``history()``, the Ion
  text of GetRevision, a block's revisions), alone or in a list: :mod:`qldbstream.io.journal_values`;
* a **GetRevision / GetBlock output** or an application's **receipt**, and a **GetDigest output**:
  :mod:`qldbstream.io.qldb_api`;
* any of these **one level inside an application's own JSON** (``{"ledgerMetadata": {...}}``): the
  object used is named in the report.

QLDB stream records and Kinesis records are not archive shapes: :func:`archive_of` returns
``None`` for them and :mod:`qldbstream.io.files` reads them as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qldbstream.core.records import KinesisRecord
from qldbstream.core.report import Subject
from qldbstream.io.journal_values import (
    block_records,
    ion_from_json,
    is_block,
    is_revision,
    is_stream_record,
    revision_record,
)
from qldbstream.io.qldb_api import (
    DigestInput,
    ProofInput,
    is_api_document,
    is_digest,
    read_digest,
    read_receipt,
)

__all__ = ["EXPECTED", "Archive", "archive_of", "is_archive_value"]

#: What ``verify`` reads, for the one line that says an input is none of it.
EXPECTED = (
    "expected a Lambda event, Kinesis records (a dump or AWS CLI get-records output), QLDB stream "
    "records, a journal block or revision (alone or in a list), a GetRevision / GetBlock / GetDigest "
    "output, or a receipt (revision or hash + proof + digest), at the top or one level inside an object"
)


@dataclass
class Archive:
    """What an archived value held: records to verify, V10 proofs, digests, and what each part was."""

    kind: str
    records: list[KinesisRecord] = field(default_factory=list)
    proofs: list[ProofInput] = field(default_factory=list)
    digests: list[DigestInput] = field(default_factory=list)
    subjects: list[Subject] = field(default_factory=list)

    def add(self, other: Archive) -> None:
        self.records += other.records
        self.proofs += other.proofs
        self.digests += other.digests
        self.subjects += other.subjects


def is_archive_value(value: Any) -> bool:
    """A block, a revision, an API output or receipt, or a digest (not inside anything)."""
    return is_block(value) or is_revision(value) or is_api_document(value) or is_digest(value)


def archive_of(value: Any, name: str, from_json: bool) -> Archive | None:
    """The archive shape ``value`` is (at its top or one level inside an object), or ``None``."""
    if isinstance(value, list):
        if value and all(is_block(v) or is_revision(v) for v in value):
            return _journal_list(value, name, from_json)
        return None
    if not isinstance(value, Mapping) or is_stream_record(value):
        return None
    if is_archive_value(value):
        return _one(value, name, None, from_json)
    found = Archive("application-json")
    for key, inner in value.items():
        if is_archive_value(inner) and not is_stream_record(inner):
            found.add(_one(inner, name, str(key), from_json))
        elif isinstance(inner, list) and inner and all(is_block(v) or is_revision(v) for v in inner):
            found.add(_journal_list(inner, f"{name} {key}", from_json, str(key)))
    return found if found.records or found.proofs or found.digests else None


def _one(value: Mapping[str, Any], name: str, used: str | None, from_json: bool) -> Archive:
    source = name if used is None else f"{name} {used}"
    if is_digest(value):
        return Archive("get-digest", digests=[read_digest(value, source)])
    if is_api_document(value):
        got = read_receipt(value, name, used)
        out = Archive("qldb-api", got.records, got.proofs, [got.digest] if got.digest else [])
        if got.subject is not None:
            out.subjects.append(got.subject)
        return out
    ion = ion_from_json(value) if from_json else value
    if is_block(ion):
        users = sum(1 for r in ion.get("revisions") or [] if is_revision(r))
        subject = Subject(source, "journal block", used, revisions=users, block=True, from_json=from_json)
        return Archive("journal-block", block_records(ion, source), subjects=[subject])
    unaddressed = int("blockAddress" not in ion)
    subject = Subject(source, "revision", used, revisions=1, unaddressed=unaddressed, from_json=from_json)
    return Archive("revision", [revision_record(ion, f"{source} revision")], subjects=[subject])


def _journal_list(values: list[Any], name: str, from_json: bool, used: str | None = None) -> Archive:
    """``history()`` results or a run of blocks: each element is its own subject."""
    out = Archive("journal-list")
    for i, v in enumerate(values):
        part = _one(v, f"{name} [{i}]", None, from_json)
        for s in part.subjects:
            s.used = used
            s.shape = "history() revision" if s.shape == "revision" else s.shape
        out.add(part)
    return out
