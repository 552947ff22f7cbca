"""Ion values as the simulator builds them, QLDB-style IDs, and time in epoch milliseconds.

Values are plain Python where amazon-ion's mapping is exact (``str`` → string, ``int`` → int,
``Decimal`` → decimal with its exponent, ``bool``, ``bytes`` → blob, ``dict`` → struct, ``list``
→ list, ``None`` → ``null``) and amazon-ion's own types where it is not: symbols
(:class:`IonPySymbol`), typed nulls (:class:`IonPyNull`) and timestamps
(:class:`IonPyTimestamp`, always with an explicit precision, so ``2024-03-01T09:00:00.120Z``
keeps its three fraction digits and its ``Z``).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from amazon.ion import simpleion
from amazon.ion.core import IonType, TimestampPrecision
from amazon.ion.simple_types import IonPyNull, IonPySymbol, IonPyTimestamp

__all__ = [
    "BASE62",
    "IonType",
    "IonValue",
    "base62_id",
    "date",
    "epoch_ms",
    "ion_text",
    "ion_type_of",
    "money",
    "symbol",
    "timestamp_ms",
    "typed_null",
]

#: Any value amazon-ion's ``simpleion.dumps`` accepts.
IonValue = Any

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CENT = Decimal("0.01")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def base62_id(rng: random.Random) -> str:
    """A QLDB-style ID: a random 128-bit value written as 22 base62 characters."""
    n = rng.getrandbits(128)
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out))


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (naive ones are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def timestamp_ms(ms: int) -> IonPyTimestamp:
    """The Ion timestamp ``YYYY-MM-DDThh:mm:ss.sssZ`` for ``ms`` since the epoch."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return IonPyTimestamp(
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        (ms % 1000) * 1000,
        UTC,
        precision=TimestampPrecision.SECOND,
        fractional_precision=3,
    )


def date(year: int, month: int, day: int) -> IonPyTimestamp:
    """A day-precision Ion timestamp (``1963-08-19T``), as QLDB samples store dates of birth."""
    return IonPyTimestamp(year, month, day, precision=TimestampPrecision.DAY)


def symbol(text: str) -> IonPySymbol:
    """An Ion symbol value (not a string)."""
    return IonPySymbol(text, None, None)


def typed_null(ion_type: IonType) -> IonPyNull:
    """A typed null such as ``null.string``."""
    return IonPyNull.from_value(ion_type, None)


def money(amount: Decimal | str | int) -> Decimal:
    """A decimal with exactly two fraction digits (``Decimal('12.50')``)."""
    return Decimal(amount).quantize(_CENT)


def ion_type_of(value: IonValue) -> IonType:
    """The Ion type amazon-ion writes ``value`` as."""
    if value is None:
        return IonType.NULL
    ion_type = getattr(value, "ion_type", None)
    if isinstance(ion_type, IonType):
        return ion_type
    if isinstance(value, bool):
        return IonType.BOOL
    if isinstance(value, int):
        return IonType.INT
    if isinstance(value, float):
        return IonType.FLOAT
    if isinstance(value, Decimal):
        return IonType.DECIMAL
    if isinstance(value, datetime):
        return IonType.TIMESTAMP
    if isinstance(value, str):
        return IonType.STRING
    if isinstance(value, bytes | bytearray):
        return IonType.BLOB
    if isinstance(value, dict):
        return IonType.STRUCT
    if isinstance(value, list | tuple):
        return IonType.LIST
    raise TypeError(f"not an Ion value: {type(value).__name__}")


def ion_text(value: IonValue) -> str:
    """Compact Ion text of one value (no version marker), for reports and expected verdicts."""
    text: str = simpleion.dumps(value, binary=False)
    return text.removeprefix("$ion_1_0 ")
