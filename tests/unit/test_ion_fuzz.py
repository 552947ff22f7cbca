"""A slice of the differential Ion fuzz (``bench/fuzz_ion.py`` runs a million records).

Mutated real and simulated QLDB records: the pure-Python and the compiled scanner agree on
every one, and every record they accept, amazon-ion loads to the same value (fields and Ion
hashes; some also through PyPI ionhash). ``QLDBSTREAM_ION_FUZZ`` sets the number of records,
``QLDBSTREAM_FUZZ_SEED`` the run.
"""

from __future__ import annotations

import os
from functools import cache

import pytest

from tests.support import ion_fuzz
from tests.support.oracles import import_ionhash

if os.environ.get("REQUIRE_QLDBSTREAM_NATIVE") == "1":
    import qldbstream_native as native
else:
    native = pytest.importorskip("qldbstream_native", reason="qldbstream-native is not installed")

COUNT = int(os.environ.get("QLDBSTREAM_ION_FUZZ", "20000"))
SEED = int(os.environ.get("QLDBSTREAM_FUZZ_SEED", "0"))


@cache
def seeds() -> list[bytes]:
    return ion_fuzz.corpus()


def test_the_seeds_are_real_and_simulated_records() -> None:
    assert len(ion_fuzz.real_records()) >= 15
    assert len(seeds()) > 100


def test_mutated_records_three_readers_agree() -> None:
    report = ion_fuzz.run(0, COUNT, 1000 + SEED, seeds(), native, import_ionhash(), oracle_every=20)
    details = "\n".join(f"{k}: {v}" for k, v in report.examples.items())
    assert not report.disagreements, f"{dict(report.disagreements)}\n{details}"
    # the slice reaches every outcome that matters: accepted, and refused as Ion and as a record
    if COUNT >= 2000:
        assert report.outcomes["accepted, same value"] > COUNT // 20, report.outcomes
        assert report.outcomes["refused (ion)"] and report.outcomes["refused (record)"], report.outcomes
        assert set(report.mutations) >= {"bytes", "length", "timestamp", "string", "decimal", "int", "inject"}


@pytest.mark.parametrize(
    "value",
    [
        b"\x82\xe2\x82",  # a 3-byte character cut short
        b"\x68\x80\x0f\xd0\x81\x81\x80\xf0\x80",  # minute 112
    ],
)
def test_a_targeted_mutation_is_judged_like_any_other(value: bytes) -> None:
    from tests.unit.test_ion_check import record_with

    report = ion_fuzz.Report()
    assert ion_fuzz.check(record_with(value), report, native) == "refused (ion)"
    assert not report.disagreements
