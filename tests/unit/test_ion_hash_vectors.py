"""Our Ion hash against every case of the official amazon-ion/ion-hash-test vectors.

Each case gives a source value (Ion text ``ion`` or Ion binary ``10n``) and the bytes an
``identity`` hash function must end with (the exact ``s(value)``) and/or the MD5 digests.
The source is encoded to Ion binary (amazon-ion's writer for text cases, the given bytes for
``10n`` cases) and hashed with qldbstream's hash-from-bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion

from qldbstream.core.ion.binary import IVM
from qldbstream.core.ion.hash import ion_hash_bytes

VECTORS = Path(__file__).parent.parent / "fixtures" / "ion-hash-test" / "ion_hash_tests.ion"


def _bytes_of(sexp: Any) -> bytes:
    return bytes(int(b) for b in sexp)


def _final_digest(expectation: Any) -> bytes:
    """The last ``digest::`` or ``final_digest::`` entry of an expectation sexp."""
    final = None
    for step in expectation:
        names = [a.text for a in step.ion_annotations]
        if "digest" in names or "final_digest" in names:
            final = _bytes_of(step)
    assert final is not None, "vector has no digest"
    return final


def _load_vectors() -> list[Any]:
    # The C extension rejects the file (IERR_TOO_MANY_ANNOTATIONS on the long update:: lists);
    # amazon-ion's pure-Python reader reads it.
    saved = simpleion.c_ext
    simpleion.c_ext = False
    try:
        return list(simpleion.loads(VECTORS.read_text(), single_value=False))
    finally:
        simpleion.c_ext = saved


def _cases() -> list[Any]:
    tests = _load_vectors()
    out = []
    for i, case in enumerate(tests):
        if case.ion_annotations:
            name = case.ion_annotations[0].text
        elif "10n" in case:
            name = "10n:" + bytes(int(b) for b in case["10n"]).hex()
        else:
            name = simpleion.dumps(case["ion"], binary=False).removeprefix("$ion_1_0 ")
        for algorithm in ("identity", "md5"):
            if algorithm in case["expect"]:
                out.append(pytest.param(case, algorithm, id=f"{i}:{algorithm}:{name[:60]}"))
    return out


CASES = _cases()


def _source_binary(case: Any) -> bytes:
    if "10n" in case:
        return IVM + _bytes_of(case["10n"])
    return simpleion.dumps(case["ion"], binary=True)


def test_every_case_of_the_vector_file_is_run() -> None:
    # ion-hash-test @c2e3655e: 167 cases, 166 with an identity expectation and 5 with md5.
    algorithms = [p.values[1] for p in CASES]
    assert (algorithms.count("identity"), algorithms.count("md5")) == (166, 5)


@pytest.mark.parametrize(("case", "algorithm"), CASES)
def test_vector(case: Any, algorithm: str) -> None:
    expected = _final_digest(case["expect"][algorithm])
    if algorithm == "identity":
        h = bytes
    else:

        def h(data: bytes) -> bytes:
            return hashlib.md5(data).digest()  # the vectors' own algorithm

    assert ion_hash_bytes(_source_binary(case), h).hex() == expected.hex()
