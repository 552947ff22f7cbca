"""Targeted tampering: change one field of one record after QLDB hashed it.

Spec syntax (``--tamper SPEC``, repeatable; :func:`parse_tamper`)::

    SPEC    := TARGET [ "+rehash" | "+rehash-block" ] ":" FIELD [ "=" ION_TEXT ]
    TARGET  := "block=" SEQUENCE_NO            the BLOCK_SUMMARY of that block
             | "revision=" DOCUMENT_ID "@" VERSION
             | "revision#" N                   the N-th REVISION_DETAILS of the stream (0-based)
             | TABLE "#" N                     the N-th REVISION_DETAILS of TABLE that shows its
                                               data (not deleted, not redacted), e.g. Transactions#3
             | "kpl=" SEQUENCE_NO              the KPL aggregate carrying that block (aggregated
                                               delivery only; FIELD must be "md5")
    FIELD   := NAME { "." NAME | "[" INDEX "]" }

Revision fields are named below ``payload.revision`` (``data.amount``, ``dataHash``,
``metadata.txTime``, ``hash``, ``blockAddress.sequenceNo``) or ``payload`` (``tableInfo.tableName``);
block fields below ``payload`` (``blockHash``, ``previousBlockHash``, ``entriesHash``,
``entriesHashList[1]``, ``transactionInfo.statements[0].statement``, ``redactionInfo...``,
``revisionSummaries[0].hash``, ``transactionId``, ``blockTimestamp``).

Without ``=ION_TEXT`` the value changes in a type-preserving way: a blob has one bit flipped,
a string or symbol its last character rotated, a decimal gains 1 (keeping its exponent), an int
``i`` becomes ``-(i+1)`` (never another revision's version), a timestamp moves by one unit of
its precision, a bool flips, a typed null gets a value. ``=ION_TEXT`` sets the given Ion value
(it may also add a new field to a struct).

``+rehash`` (revision ``data``/``dataHash``/``metadata``): the forger also recomputes
``revision.hash`` and patches the block's summary entry. ``+rehash-block`` (those, and block
``transactionInfo``/``redactionInfo``/``revisionSummaries[i].hash``): the forger also
recomputes ``entriesHashList``, ``entriesHash`` and ``blockHash`` (and the partition keys).
What each tamper makes fail is in :mod:`qldbstream_tools.simulate.verdicts`.

Examples::

    revision#12:data.amount                  block=7:entriesHashList[1]
    revision#3:metadata.txTime               block=9:transactionInfo.statements[0].statement
    revision=5yRQ...Ve@2:dataHash             block=7+rehash-block:transactionInfo.statements[1].startTime
    revision#3+rehash-block:data.amount=0.01  kpl=10:md5
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from amazon.ion import simpleion

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.fields import parse_path
from qldbstream_tools.simulate.values import IonValue, ion_text

__all__ = [
    "AUTO",
    "BlockTarget",
    "KplTarget",
    "Rehash",
    "RevisionIndex",
    "RevisionTarget",
    "TableIndex",
    "Tamper",
    "Target",
    "parse_tamper",
]

Rehash = Literal["none", "revision", "block"]


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


#: "Change the value in a type-preserving way" (the default of :class:`Tamper`).
AUTO: Final = _Auto()


@dataclass(frozen=True, slots=True)
class BlockTarget:
    sequence_no: int


@dataclass(frozen=True, slots=True)
class RevisionTarget:
    document_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RevisionIndex:
    index: int


@dataclass(frozen=True, slots=True)
class TableIndex:
    """The ``index``-th revision of ``table`` (0-based) that shows its data in the stream."""

    table: str
    index: int


@dataclass(frozen=True, slots=True)
class KplTarget:
    sequence_no: int


Target = BlockTarget | RevisionTarget | RevisionIndex | TableIndex | KplTarget


@dataclass(frozen=True, slots=True)
class Tamper:
    """One tamper: which record, which field, the new value (or :data:`AUTO`), how far to re-hash."""

    target: Target
    field: str
    value: IonValue = AUTO
    rehash: Rehash = "none"

    @property
    def spec(self) -> str:
        """The tamper in the ``--tamper`` syntax."""
        t = self.target
        if isinstance(t, BlockTarget):
            head = f"block={t.sequence_no}"
        elif isinstance(t, RevisionTarget):
            head = f"revision={t.document_id}@{t.version}"
        elif isinstance(t, RevisionIndex):
            head = f"revision#{t.index}"
        elif isinstance(t, TableIndex):
            head = f"{t.table}#{t.index}"
        else:
            head = f"kpl={t.sequence_no}"
        head += {"none": "", "revision": "+rehash", "block": "+rehash-block"}[self.rehash]
        tail = "" if self.value is AUTO else "=" + ion_text(self.value)
        return f"{head}:{self.field}{tail}"


_TARGET = re.compile(
    r"^(?:block=(?P<block>\d+)|kpl=(?P<kpl>\d+)|revision#(?P<index>\d+)"
    r"|revision=(?P<doc>[0-9A-Za-z]+)@(?P<version>\d+)|(?P<table>[A-Za-z_][0-9A-Za-z_]*)#(?P<nth>\d+))"
    r"(?P<rehash>\+rehash(?:-block)?)?$"
)
_REVISION_ROOTS = ("data", "dataHash", "metadata", "hash", "blockAddress", "tableInfo")
_BLOCK_ROOTS = (
    "blockHash",
    "previousBlockHash",
    "entriesHash",
    "entriesHashList",
    "transactionInfo",
    "redactionInfo",
    "revisionSummaries",
    "transactionId",
    "blockTimestamp",
)


def parse_tamper(spec: str) -> Tamper:
    """Parse ``--tamper`` syntax (see the module docstring); :class:`ConfigurationError` if invalid."""
    head, sep, rest = spec.partition(":")
    m = _TARGET.match(head.strip())
    if not sep or m is None:
        raise ConfigurationError(
            f"tamper {spec!r}: expected TARGET:FIELD[=ION] with TARGET block=N, revision#N, TABLE#N, "
            "revision=DOCID@VERSION or kpl=N (optionally +rehash / +rehash-block)"
        )
    field_path, eq, value_text = rest.partition("=")
    field_path = field_path.strip()
    parse_path(field_path, spec)
    value: IonValue = AUTO
    if eq:
        try:
            value = simpleion.loads(value_text)
        except Exception as exc:  # amazon-ion raises several exception types for bad text
            raise ConfigurationError(
                f"tamper {spec!r}: {value_text!r} is not one Ion value ({exc})"
            ) from None
    target: Target
    if m["block"] is not None:
        target = BlockTarget(int(m["block"]))
    elif m["kpl"] is not None:
        target = KplTarget(int(m["kpl"]))
    elif m["index"] is not None:
        target = RevisionIndex(int(m["index"]))
    elif m["table"] is not None:
        target = TableIndex(m["table"], int(m["nth"]))
    else:
        target = RevisionTarget(m["doc"], int(m["version"]))
    rehash: Rehash = {None: "none", "+rehash": "revision", "+rehash-block": "block"}[m["rehash"]]  # type: ignore[assignment]
    return Tamper(target, field_path, value, rehash)
