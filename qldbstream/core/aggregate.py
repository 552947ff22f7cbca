"""KPL aggregation: the inverse of :mod:`qldbstream.core.deaggregate`.

An aggregate is ``F3 89 9A C2`` + protobuf ``AggregatedRecord`` + MD5(protobuf)
(awslabs/amazon-kinesis-producer ``aggregation-format.md``; the schema is quoted in
:mod:`qldbstream.core.deaggregate`). Partition keys and explicit hash keys are stored once each in
their tables, in first-use order, and every user record points at its entries by index.

:func:`aggregate` packs a given list of user records into one aggregate. :func:`pack` is the
size-bounded packer: it fills aggregates in order and starts a new one whenever the next user
record would push the Kinesis record past :data:`MAX_RECORD_BYTES` (the Kinesis limit counts
the data *and* the partition key, as the KPL does). Each aggregate goes to Kinesis with the
partition key (and explicit hash key) of its first user record unless the caller names one.

The protobuf is written by hand (three fields, all length-delimited or varint), so the package
needs no protobuf runtime; ``aws-kinesis-agg`` stays in the test suite as the oracle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from qldbstream.core.deaggregate import KPL_MAGIC

__all__ = [
    "MAX_RECORD_BYTES",
    "AggregatedRecord",
    "UserRecordEntry",
    "aggregate",
    "aggregated_size",
    "pack",
]

#: A Kinesis record may hold 1 MiB: data blob plus partition key.
MAX_RECORD_BYTES = 1024 * 1024

#: ``(partition_key, explicit_hash_key or None, data)``, the shape
#: :func:`qldbstream.core.deaggregate.parse_aggregate` returns.
UserRecordEntry = tuple[str, str | None, bytes]

_MD5_LEN = 16
_OVERHEAD = len(KPL_MAGIC) + _MD5_LEN
# Field keys: (field number << 3) | wire type.
_TABLE_PK, _TABLE_EHK, _RECORDS = b"\x0a", b"\x12", b"\x1a"
_REC_PK_INDEX, _REC_EHK_INDEX, _REC_DATA = b"\x08", b"\x10", b"\x1a"


@dataclass(frozen=True, slots=True)
class AggregatedRecord:
    """One Kinesis record ready to put: the aggregate bytes and the keys to put it with."""

    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    #: How many user records it holds.
    count: int

    @property
    def size(self) -> int:
        """Bytes counted against the Kinesis record limit (data + UTF-8 partition key)."""
        return len(self.data) + len(self.partition_key.encode("utf-8"))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _field_len(payload_len: int) -> int:
    """Size of a length-delimited field (one-byte key) whose payload is ``payload_len`` bytes."""
    return 1 + _varint_len(payload_len) + payload_len


def _record_len(pk_index: int, ehk_index: int | None, data_len: int) -> int:
    n = 1 + _varint_len(pk_index) + _field_len(data_len)
    if ehk_index is not None:
        n += 1 + _varint_len(ehk_index)
    return n


class _Builder:
    """Accumulates user records and knows the exact size of the aggregate it would produce."""

    __slots__ = ("_ehk_index", "_pk_index", "_records", "body_len", "count")

    def __init__(self) -> None:
        self._pk_index: dict[str, int] = {}
        self._ehk_index: dict[str, int] = {}
        self._records: list[tuple[int, int | None, bytes]] = []
        self.body_len = 0
        self.count = 0

    def growth(self, pk: str, ehk: str | None, data: bytes) -> int:
        """How many protobuf bytes adding this user record would add."""
        n = 0
        pk_index = self._pk_index.get(pk)
        if pk_index is None:
            pk_index = len(self._pk_index)
            n += _field_len(len(pk.encode("utf-8")))
        ehk_index: int | None = None
        if ehk is not None:
            ehk_index = self._ehk_index.get(ehk)
            if ehk_index is None:
                ehk_index = len(self._ehk_index)
                n += _field_len(len(ehk.encode("utf-8")))
        return n + _field_len(_record_len(pk_index, ehk_index, len(data)))

    def add(self, pk: str, ehk: str | None, data: bytes) -> None:
        self.body_len += self.growth(pk, ehk, data)
        pk_index = self._pk_index.setdefault(pk, len(self._pk_index))
        ehk_index = None if ehk is None else self._ehk_index.setdefault(ehk, len(self._ehk_index))
        self._records.append((pk_index, ehk_index, data))
        self.count += 1

    def build(self) -> bytes:
        parts: list[bytes] = []
        for key in self._pk_index:
            raw = key.encode("utf-8")
            parts += (_TABLE_PK, _varint(len(raw)), raw)
        for key in self._ehk_index:
            raw = key.encode("utf-8")
            parts += (_TABLE_EHK, _varint(len(raw)), raw)
        for pk_index, ehk_index, data in self._records:
            rec = [_REC_PK_INDEX, _varint(pk_index)]
            if ehk_index is not None:
                rec += (_REC_EHK_INDEX, _varint(ehk_index))
            rec += (_REC_DATA, _varint(len(data)), data)
            body = b"".join(rec)
            parts += (_RECORDS, _varint(len(body)), body)
        protobuf = b"".join(parts)
        return KPL_MAGIC + protobuf + hashlib.md5(protobuf).digest()  # noqa: S324 - the KPL checksum


def aggregate(entries: Sequence[UserRecordEntry]) -> bytes:
    """Encode ``entries`` (``(partition_key, explicit_hash_key|None, data)``) as one KPL aggregate.

    No size limit is applied here; use :func:`pack` to stay within a Kinesis record.
    """
    builder = _Builder()
    for pk, ehk, data in entries:
        builder.add(pk, ehk, bytes(data))
    return builder.build()


def aggregated_size(entries: Sequence[UserRecordEntry]) -> int:
    """The length of ``aggregate(entries)``, computed without building it."""
    builder = _Builder()
    for pk, ehk, data in entries:
        builder.add(pk, ehk, data)
    return _OVERHEAD + builder.body_len


def pack(
    entries: Iterable[UserRecordEntry],
    *,
    partition_key: str | None = None,
    explicit_hash_key: str | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[AggregatedRecord]:
    """Pack user records, in order, into as few aggregates as fit in ``max_bytes`` each.

    The size bound covers the aggregate bytes plus the Kinesis record's partition key:
    ``partition_key`` when given, else the first user record's (what the KPL does). Raises
    :class:`ValueError` for a user record that cannot fit in an aggregate on its own.
    """
    if max_bytes > MAX_RECORD_BYTES:
        raise ValueError(f"max_bytes {max_bytes} exceeds the Kinesis record limit of {MAX_RECORD_BYTES}")
    builder: _Builder | None = None
    outer_pk = ""
    outer_ehk: str | None = None
    for pk, ehk, data in entries:
        if builder is not None:
            grown = _OVERHEAD + builder.body_len + builder.growth(pk, ehk, data)
            if grown + len(outer_pk.encode("utf-8")) <= max_bytes:
                builder.add(pk, ehk, data)
                continue
            yield AggregatedRecord(outer_pk, outer_ehk, builder.build(), builder.count)
        builder = _Builder()
        outer_pk = pk if partition_key is None else partition_key
        outer_ehk = ehk if partition_key is None else explicit_hash_key
        size = _OVERHEAD + builder.growth(pk, ehk, data) + len(outer_pk.encode("utf-8"))
        if size > max_bytes:
            raise ValueError(
                f"user record with partition key {pk!r} ({len(data)} bytes) does not fit in an "
                f"aggregate of at most {max_bytes} bytes"
            )
        builder.add(pk, ehk, data)
    if builder is not None:
        yield AggregatedRecord(outer_pk, outer_ehk, builder.build(), builder.count)
