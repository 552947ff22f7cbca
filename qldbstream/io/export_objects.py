"""The parts of a journal export and what can be wrong with them: the data objects a completed
manifest lists, the blocks read from them, and the problems the walk names
(:mod:`qldbstream.io.journal_export` reads the export).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qldbstream.core.errors import InputError
from qldbstream.core.records import KinesisRecord

__all__ = [
    "ExportBlock",
    "ExportError",
    "ExportObject",
    "ExportProblem",
    "address_of",
    "object_of",
    "range_problems",
]

#: ``<anything>.<strandId>.<first>-<last>.<ext>`` (the strand right before the range)
_OBJECT = re.compile(r"(?:^|[/.])(?P<strand>[A-Za-z0-9]+)\.(?P<first>\d+)-(?P<last>\d+)\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ExportObject:
    """One data object the completed manifest lists, with the range its name claims."""

    strand_id: str
    key: str
    #: from the object's name; ``None`` when the name does not carry ``<first>-<last>``
    first_seq: int | None
    last_seq: int | None


@dataclass(frozen=True)
class ExportBlock:
    strand_id: str
    sequence_no: int
    object_key: str
    #: the block as read (Ion values; JSON rebuilt as Ion, see ``journal_values.ion_from_json``)
    value: Any
    #: its ``BLOCK_SUMMARY`` and ``REVISION_DETAILS`` records, sources ``<key>#<index>``
    records: list[KinesisRecord]
    #: read from JSON Lines (Ion types of the documents' data may be lost)
    from_json: bool = False


@dataclass(frozen=True)
class ExportProblem:
    """Something wrong with the export itself, named for the report.

    ``kind``: ``incomplete`` (no completed manifest), ``bad-manifest``, ``missing-object``,
    ``unreadable-object``, ``object-name``, ``object-order``, ``overlap``, ``missing-range``,
    ``not-a-block``, ``address-mismatch``, ``unlisted-object``.
    """

    kind: str
    message: str
    strand_id: str | None = None
    key: str | None = None
    sequence_no: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "strandId": self.strand_id,
            "key": self.key,
            "sequenceNo": self.sequence_no,
        }


class ExportError(InputError):
    """A problem with the export met by :meth:`JournalExport.blocks` (``.problem`` says which)."""

    def __init__(self, problem: ExportProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def object_of(strand: str, key: str) -> ExportObject:
    m = _OBJECT.search(key)
    if m is None:
        return ExportObject(strand, key, None, None)
    return ExportObject(m["strand"], key, int(m["first"]), int(m["last"]))


def address_of(block: Mapping[str, Any]) -> tuple[int | None, str | None]:
    address = block.get("blockAddress")
    if not isinstance(address, Mapping):
        return None, None
    seq, strand = address.get("sequenceNo"), address.get("strandId")
    return (
        int(seq) if isinstance(seq, int) and not isinstance(seq, bool) else None,
        str(strand) if isinstance(strand, str) else None,
    )


def range_problems(strand: str, prev: ExportObject, obj: ExportObject) -> Iterator[ExportProblem]:
    assert prev.first_seq is not None and prev.last_seq is not None and obj.first_seq is not None
    if obj.first_seq < prev.first_seq:
        yield ExportProblem(
            "object-order",
            f"{obj.key} (blocks {obj.first_seq}-{obj.last_seq}) is listed after {prev.key} "
            f"(blocks {prev.first_seq}-{prev.last_seq})",
            strand,
            obj.key,
            obj.first_seq,
        )
    elif obj.first_seq <= prev.last_seq:
        yield ExportProblem(
            "overlap",
            f"{obj.key} (blocks {obj.first_seq}-{obj.last_seq}) overlaps {prev.key} "
            f"(blocks {prev.first_seq}-{prev.last_seq})",
            strand,
            obj.key,
            obj.first_seq,
        )
    elif obj.first_seq > prev.last_seq + 1:
        yield ExportProblem(
            "missing-range",
            f"no object holds blocks {prev.last_seq + 1}-{obj.first_seq - 1} of strand {strand} "
            f"(between {prev.key} and {obj.key})",
            strand,
            obj.key,
            prev.last_seq + 1,
        )
