"""Our Ion hash agrees with PyPI ionhash (the oracle) on generated Ion values, and hashing works
on the data model: non-minimal binary encodings of one value hash the same."""

from __future__ import annotations

from typing import Any

import pytest
from amazon.ion import simpleion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qldbstream.core.errors import IonHashError, MalformedIonError
from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.hash import ion_hash, ion_hash_bytes
from tests.support import ion_values as strategies
from tests.support.oracles import import_ionhash

oracle = import_ionhash()

#: NaN left out: see test_every_nan_hashes_as_the_canonical_nan
ion_values = strategies.ion_values(st.text(max_size=20), nan=False, annotate_everything=False)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ion_values)
def test_agrees_with_ionhash(value: Any) -> None:
    assert ion_hash(value) == oracle(value)
    # and on the values amazon-ion reads back from the binary it wrote
    assert ion_hash(value) == oracle(simpleion.loads(simpleion.dumps(value, binary=True)))


@pytest.mark.parametrize(
    "bits", ["7ff8000000000000", "fff8000000000000", "7ff0000000000001", "7ff4000000000000"]
)
def test_every_nan_hashes_as_the_canonical_nan(bits: str) -> None:
    # Ion Hash spec: "each float has just one encoding"; the vector for nan is 7f f8 00 .. 00.
    # ionhash-python packs the raw bits instead, so a NaN with a sign or payload differs there.
    canonical = b"\x0b\x40\x7f\xf8\x00\x00\x00\x00\x00\x00\x0e"
    assert ion_hash_bytes(IVM + b"\x48" + bytes.fromhex(bits), bytes) == canonical


def test_known_value() -> None:
    # qldb-stream-format.md §4.1 worked example
    assert ion_hash("user1").hex() == "b74e2b11e78f6fd8215722299f022fbb58732214c7a604ba81889ff3aa4ddad8"


def _h(body: bytes) -> str:
    return ion_hash_bytes(IVM + body).hex()


@pytest.mark.parametrize(
    ("minimal", "variants"),
    [
        (b"\x21\x7f", [b"\x24\x00\x00\x00\x7f", b"\x2e\x81\x7f"]),  # padded UInt, VarUInt length
        (b"\x20", [b"\x22\x00\x00", b"\x30"]),  # zero with padding; negative zero
        (b"\x48\x3f\xf8\x00\x00\x00\x00\x00\x00", [b"\x44\x3f\xc0\x00\x00"]),  # 1.5 as float32
        (b"\x40", [b"\x48" + b"\x00" * 8]),  # 0e0 in 8 bytes
        (b"\x50", [b"\x51\x80", b"\x52\x80\x00", b"\x51\xc0"]),  # 0d0 forms from the spec
        (b"\x52\xc1\x0f", [b"\x54\x40\x81\x00\x0f"]),  # 1.5 with padded exponent and coefficient
        (b"\x68\x80\x0f\xd0\x81\x81\x80\x80\x80", [b"\x69\x80\x0f\xd0\x81\x81\x80\x80\x80\x81"]),
        (
            b"\xd3\x84\x21\x01",
            [b"\xd1\x83\x84\x21\x01", b"\xd5\x84\x21\x01\x80\x00", b"\xde\x83\x84\x21\x01"],
        ),
        (b"\xb2\x21\x01", [b"\xb3\x00\x21\x01", b"\xbe\x82\x21\x01"]),  # NOP pad inside a list
    ],
)
def test_non_minimal_encodings_hash_like_the_minimal_one(minimal: bytes, variants: list[bytes]) -> None:
    for v in variants:
        assert _h(v) == _h(minimal), v.hex()


def test_symbol_with_unknown_text_cannot_be_hashed() -> None:
    # local symbol table {symbols:[1]}: SID 10 exists but its text is unknown
    lst = b"\xe7\x81\x83\xd4\x87\xb2\x21\x01"
    with pytest.raises(IonHashError, match="unknown text"):
        ion_hash_bytes(IVM + lst + b"\x71\x0a")


@pytest.mark.parametrize(
    "body",
    [b"\x2e", b"\x88abc", b"\xd3\x8a\x21", b"\xf0", b"\xe3\x81\x84", b"\x21\x01\x21\x02", b""],
)
def test_malformed_ion_is_a_typed_error(body: bytes) -> None:
    with pytest.raises(MalformedIonError):
        ion_hash_bytes(IVM + body)
