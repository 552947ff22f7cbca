"""What the scanner accepts, amazon-ion loads to the same value; the rest is malformed Ion.

Each case puts one value into the ``data`` of an otherwise valid REVISION_DETAILS record (and,
where it matters, outside the hashed values) and checks that the pure-Python and the compiled
scanner refuse it with the same ``MalformedIonError`` - or, for the edge cases that are valid,
accept it and agree with amazon-ion on every field and hash (``tests/support/ion_fuzz.py``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from amazon.ion import simpleion

from qldbstream.core.decode import decode_bytes
from qldbstream.core.errors import MalformedIonError
from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.hash import ion_hash, ion_hash_bytes
from qldbstream.core.records import Position
from qldbstream.core.scan import scan_record
from tests.support.ion_fuzz import Report, check, python_scan

if os.environ.get("REQUIRE_QLDBSTREAM_NATIVE") == "1":
    import qldbstream_native as native
else:
    native = pytest.importorskip("qldbstream_native", reason="qldbstream-native is not installed")

_MARKER = b"\x00" * 24  # a 24-byte blob in data, replaced by the value under test


def record_with(value: bytes, where: str = "data") -> bytes:
    """A REVISION_DETAILS record whose ``data.x`` (or ``tableInfo.x``) is the Ion value ``value``.

    The value replaces a 24-byte blob; the bytes it does not fill become NOP padding (a field
    whose value is a NOP pad), so no enclosing length changes.
    """
    holder: dict[str, Any] = {"x": _MARKER, "amount": 1}
    table: dict[str, Any] = {"tableName": "T", "tableId": "tid"}
    data: dict[str, Any] = {"amount": 1}
    if where == "data":
        data = holder
    else:
        table = {**table, **holder}
    raw = simpleion.dumps(
        {
            "qldbStreamArn": "arn:aws:qldb:eu-west-1:123456789012:stream/l/s",
            "recordType": "REVISION_DETAILS",
            "payload": {
                "tableInfo": table,
                "revision": {
                    "blockAddress": {"strandId": "strand", "sequenceNo": 3},
                    "hash": b"\x01" * 32,
                    "data": data,
                    "metadata": {
                        "id": "doc",
                        "version": 0,
                        "txId": "tx",
                        "txTime": simpleion.loads("2024-03-01T09:00:00.123Z"),
                    },
                },
            },
        },
        binary=True,
    )
    blob = b"\xae\x98" + _MARKER  # the blob's type descriptor, length 24, body
    at = raw.index(blob)
    room = len(blob) - len(value) - 1  # one byte for the NOP field's name (SID 0)
    assert room >= 1, "value too long for the marker"
    nop = (
        bytes([room - 1]) + bytes(room - 1)
        if room < 15
        else b"\x0e" + bytes([0x80 | (room - 2)]) + bytes(room - 2)
    )
    out = raw[:at] + value + b"\x80" + nop + raw[at + len(blob) :]
    assert len(out) == len(raw)
    return out


def native_scan(data: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", native.scan_record(data))
    except native.NativeDecodeError as exc:
        return ("error", *exc.args)


def ts(body: bytes) -> bytes:
    return bytes([0x60 | len(body)]) + body


# 2000-01-01 as components: offset, year 2000, month 1, day 1
_Z = b"\x80"
_Y2000 = b"\x0f\xd0"
_JAN1 = b"\x81\x81"

REFUSED: dict[str, tuple[bytes, str]] = {
    "invalid UTF-8": (b"\x82\xc3\x28", "Ion string is not valid UTF-8"),
    "a lone continuation byte": (b"\x83ab\x80", "Ion string is not valid UTF-8"),
    "a UTF-16 surrogate": (b"\x83\xed\xa0\x80", "Ion string is not valid UTF-8"),
    "minute 112": (ts(_Z + _Y2000 + _JAN1 + b"\x80\xf0"), "Ion timestamp minute is not 0 to 59"),
    "hour 25": (ts(_Z + _Y2000 + _JAN1 + b"\x99\x80"), "Ion timestamp hour is not 0 to 23"),
    "second 60": (ts(_Z + _Y2000 + _JAN1 + b"\x80\x80\xbc"), "Ion timestamp second is not 0 to 59"),
    "a day without its end bit": (
        ts(_Z + _Y2000 + b"\x81\x01\x80\x80\x80"),
        "Ion timestamp day is not 1 to 31",
    ),
    "month 13": (ts(_Z + _Y2000 + b"\x8d"), "Ion timestamp month is not 1 to 12"),
    "month 0": (ts(b"\xc0" + _Y2000 + b"\x80"), "Ion timestamp month is not 1 to 12"),
    "February 30": (ts(b"\xc0" + _Y2000 + b"\x82\x9e"), "Ion timestamp day is not 1 to 29"),
    "February 29 of 1900": (ts(b"\xc0\x0e\xec\x82\x9d"), "Ion timestamp day is not 1 to 28"),
    "year 0": (ts(b"\xc0\x80"), "Ion timestamp year is not 1 to 9999"),
    "year 10000": (ts(b"\xc0\x4e\x90"), "Ion timestamp year is not 1 to 9999"),
    "an offset on a year": (
        ts(b"\x81" + _Y2000),
        "Ion timestamp has an offset but no time (amazon-ion drops it)",
    ),
    "+00:00 on a day": (
        ts(_Z + _Y2000 + _JAN1),
        "Ion timestamp has an offset but no time (amazon-ion drops it)",
    ),
    "an offset of 24 hours": (
        ts(b"\x0b\xa0" + _Y2000 + _JAN1 + b"\x80\x80"),
        "Ion timestamp offset is 24 hours or more",
    ),
    "a local time before year 1": (
        ts(b"\xc1\x81\x81\x81\x80\x80"),
        "Ion timestamp's local time is outside years 1 to 9999",
    ),
    "a local time after 9999": (
        ts(b"\x81\x4e\x8f\x8c\x9f\x97\xbb"),
        "Ion timestamp's local time is outside years 1 to 9999",
    ),
    "a padded +23:59 offset (3 bytes)": (
        ts(b"\x00\x0b\x9f" + _Y2000 + _JAN1 + b"\x80\x80"),
        "Ion timestamp offset is longer than 2 bytes",
    ),
    "a padded month": (ts(b"\xc0" + _Y2000 + b"\x00\x81"), "Ion timestamp has a padded component"),
    "fractional seconds of 1d-40": (
        ts(_Z + _Y2000 + _JAN1 + b"\x80\x80\x80\xe8\x01"),
        "Ion timestamp has fractional seconds finer than nanoseconds (amazon-ion changes them)",
    ),
    "fractional seconds of 1": (
        ts(_Z + _Y2000 + _JAN1 + b"\x80\x80\x80\xc1\x0a"),
        "Ion timestamp fractional seconds must be less than 1",
    ),
    "an hour without minutes": (
        ts(_Z + _Y2000 + _JAN1 + b"\x80"),
        "Ion timestamp has an hour without minutes",
    ),
    "an int of negative zero": (b"\x30", "Ion int is a negative zero"),
    "a padded negative zero": (b"\x31\x00", "Ion int is a negative zero"),
    "a float of 3 bytes": (b"\x43\x00\x00\x00", "Ion float has length 3 (must be 0, 4 or 8)"),
    "an empty sorted struct": (b"\xd1\x80", "Ion sorted struct is empty"),
    "a decimal exponent of 6112": (
        b"\x53\x2f\xe0\x01",
        "Ion decimal exponent is outside -6176 to 6111 (amazon-ion changes or refuses it)",
    ),
    "a decimal exponent of -6177": (
        b"\x53\x70\xa1\x01",
        "Ion decimal exponent is outside -6176 to 6111 (amazon-ion changes or refuses it)",
    ),
    "a symbol ID of 5 bytes (padded)": (
        b"\x75\x00\x00\x00\x00\x04",
        "Ion symbol value is longer than 4 bytes",
    ),
    "a symbol not in the table": (b"\x72\x7f\xff", "Ion symbol ID 32767 is not in the symbol table"),
    "an annotation not in the table": (
        b"\xe5\x82\x7f\xff\x21\x01",
        "Ion symbol ID 16383 is not in the symbol table",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
@pytest.mark.parametrize("where", ["data", "tableInfo"])
def test_malformed_values_are_refused_by_both_scanners(case: str, where: str) -> None:
    value, message = REFUSED[case]
    data = record_with(value, where)
    python = python_scan(data)
    assert python[:2] == ("error", "ion"), python
    assert python[2].startswith(message), python
    assert native_scan(data) == python
    # and what it protects: amazon-ion refuses it, or reads another value than the bytes say
    try:
        loaded = simpleion.loads(data)
    except Exception:  # amazon-ion's untyped IonException
        return
    holder = loaded["payload"]["revision"]["data"] if where == "data" else loaded["payload"]["tableInfo"]
    try:
        as_written = ion_hash_bytes(IVM + value)
    except MalformedIonError:  # (a symbol ID that only this record's table could resolve)
        return
    assert as_written != ion_hash(holder["x"]), "amazon-ion reads the value as written: why refuse it?"


def test_a_malformed_value_is_a_typed_error_carrying_the_position() -> None:
    data = record_with(REFUSED["invalid UTF-8"][0])
    position = Position("shardId-000000000000", "49590338271490256608559692538361571095921575989136588898")
    with pytest.raises(MalformedIonError) as info:
        decode_bytes(data, position)
    assert info.value.position == position
    assert info.value.action == "dead-letter"


ACCEPTED: dict[str, bytes] = {
    "February 29 of 2000": ts(b"\xc0" + _Y2000 + b"\x82\x9d"),
    "a year with an unknown offset": ts(b"\xc0" + _Y2000),
    "minute precision, unknown offset": ts(b"\xc0" + _Y2000 + _JAN1 + b"\x80\x80"),
    "an offset of 23:59": ts(b"\x0b\x9f" + _Y2000 + _JAN1 + b"\x80\x80"),
    "nanoseconds": ts(_Z + _Y2000 + _JAN1 + b"\x80\x80\x80\xc9\x3b\x9a\xc9\xff"),
    "zero with 9 digits": ts(_Z + _Y2000 + _JAN1 + b"\x80\x80\x80\xc9"),
    "a padded offset": ts(b"\x00\x80" + _Y2000 + _JAN1 + b"\x80\x80"),
    "year 1, local time in year 1": ts(b"\x81\x81\x81\x81\x80\x80"),
    "year 9999 UTC": ts(_Z + b"\x4e\x8f\x8c\x9f\x97\xbb"),
    "a padded positive zero int": b"\x21\x00",
    "a negative int": b"\x31\x05",
    "a decimal exponent of 6111": b"\x53\x2f\xdf\x01",
    "a decimal exponent of -6176": b"\x53\x70\xa0\x01",
    "a decimal negative zero": b"\x52\x80\x80",
    "null.int written as 0x3F": b"\x3f",
    "a four-byte float": b"\x44\x3f\x80\x00\x00",
    "a string with a 4-byte character": b"\x84\xf0\x9f\x98\x80",
    "a sorted struct": b"\xd1\x83\x84\x21\x01",
    "a symbol ID padded to 4 bytes": b"\x74\x00\x00\x00\x04",
    "a padded offset of two bytes": ts(b"\x00\x81" + _Y2000 + _JAN1 + b"\x80\x80"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_edge_cases_are_accepted_with_amazon_ions_value(case: str) -> None:
    data = record_with(ACCEPTED[case])
    python = python_scan(data)
    assert python[0] == "ok", python
    assert native_scan(data) == python
    report = Report()
    assert check(data, report, native) == "accepted, same value", report.examples


def test_null_int_hashes_as_amazon_ion_writes_it() -> None:
    assert ion_hash_bytes(IVM + b"\x3f") == ion_hash_bytes(IVM + b"\x2f")
    assert native.ion_hash_bytes(IVM + b"\x3f") == native.ion_hash_bytes(IVM + b"\x2f")


def test_a_refused_record_is_refused_before_anyone_reads_its_data() -> None:
    # the case: invalid UTF-8 with a recomputed hash verified, then .data raised an
    # untyped IonException; now the scan refuses it (the hash never gets compared)
    data = record_with(b"\x82\xff\xfe")
    with pytest.raises(MalformedIonError, match="not valid UTF-8"):
        scan_record(data)


#: A mutated simulated record on which amazon-ion 0.15's C reader loops forever (a length runs
#: past the end of the record; found by bench/fuzz_ion.py). Nothing may hand it to
#: amazon-ion: the scanners refuse it.
HANGS_AMAZON_ION = bytes.fromhex(
    "e00100eaee01f38183de01ee87be01ea8d716c646253747265616d41726e8a7265636f726454797065877061796c6f61"
    "64897461626c65496e666f897461626c654e616d65877461626c654964887265766973696f6e8c2d6c6f636b41646472"
    "65737388737472616e6449648a73657175656e63654e6f846861736884646174618d7472616e73616374696f6e496489"
    "6163636f756e744964847479706586616d6f756e748863757272656e6379886d65726368616e748e906d65726368616e"
    "7443617465676f7279866f6e6c696e65876368616e6e656c7465644174886d6574616461746182696486747854696d65"
    "8474784964de02f38a8ec961726e3a6177733a716c64623a65752d776573742d313a3132333435363738393031323a73"
    "747265616d2f73696d62616e6b2f36363268374d506f54705a7a444b5068797a656c704d8b8e905245564953494f4e5f"
    "44455441494c538cde02908ddea78e8c5472616e73616374696f6e738f8e96306a453747624679434c526c736f633843"
    "445a70574490de01e291de9c928e96307673596430484c4f374f716d776c746f777050433293211194aea07cfa7415b9"
    "ad0528387445e30dc96118101df584385a5ef080e406a9d5e259f395ded9968e8e545830303030303030303030323197"
    "8c414330303030303030303035988c434152445f5041594d454e549953c20b219a835553449b8d436f726e6572204772"
    "6f6365729c2215239e711d9f6a800fe88381898099c34ea0dec1a18e96374e686b5a37486c6b45587774665041487066"
    "6936758520a26b800fe88381898099c30083a38e96376b743743567937306d6a41444ea0dec1a18e96374e686b5a5463"
    "71664d4865676b"
)


def test_a_record_that_hangs_amazon_ion_is_refused_by_both_scanners() -> None:
    python = python_scan(HANGS_AMAZON_ION)
    assert python[:2] == ("error", "ion"), python
    assert native_scan(HANGS_AMAZON_ION) == python


def test_a_symbol_table_is_checked_like_a_value() -> None:
    # $ion_symbol_table::{symbols:["a", <a symbol with a 9-byte ID>]} 1 - amazon-ion reads the
    # whole table and overflows (found by the fuzz: a string length cut by one in a real table)
    symbols = b"\x81a" + b"\x79" + bytes(range(1, 10))
    table = b"\xde\x8e\x87" + bytes([0xB0 | len(symbols)]) + symbols
    data = IVM + b"\xee\x92\x81\x83" + table + b"\x21\x01"
    with pytest.raises(Exception):  # noqa: B017 - amazon-ion's untyped IonException
        simpleion.loads(data)
    python = python_scan(data)
    assert python[:2] == ("error", "ion"), python
    assert python[2] == "Ion symbol value is longer than 4 bytes"
    assert native_scan(data) == python
    with pytest.raises(MalformedIonError):  # (the symbol table is read wherever a record is)
        ion_hash_bytes(data)
    with pytest.raises(native.NativeDecodeError):
        native.ion_hash_bytes(data)
