"""The compiled V3 / V9 state (``qldbstream_native.CrossReferencer`` / ``ChainTracker``) against
the Python reference classes: the same operation sequences - in order, out of order, duplicated,
forged, beyond the memory bound - must give equal results, op by op, and the same leftovers
(``unmatched()``, ``evicted``, ``gaps()``, ``span()``, ``run_count``).

Skipped when the extension is not installed, unless ``REQUIRE_QLDBSTREAM_NATIVE=1`` (CI).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qldbstream.core.chain import ChainTracker, Gap, LinkResult
from qldbstream.core.crossref import _PASSED, CrossCheck, CrossReferencer, Unmatched
from qldbstream.core.verify import Verifier

if os.environ.get("REQUIRE_QLDBSTREAM_NATIVE") == "1":
    import qldbstream_native as native  # a missing extension fails the run
else:
    native = pytest.importorskip("qldbstream_native", reason="qldbstream-native is not installed")

HASHES = [bytes([i]) * 32 for i in range(1, 6)]
strands = st.sampled_from(["S1", "S2"])
hashes = st.sampled_from(HASHES)
docs = st.sampled_from(["d1", "d2", "d3"])
txs = st.sampled_from(["t1", "t2"])
versions = st.sampled_from([0, 1, 2**70])

revision_op = st.tuples(st.just("revision"), strands, st.integers(0, 6), docs, versions, txs, hashes)
entries_op = st.tuples(
    st.just("entries"), strands, st.integers(0, 6), txs, st.dictionaries(hashes, docs, max_size=3)
)
block_op = st.tuples(
    st.just("block"),
    strands,
    st.integers(0, 6),
    txs,
    st.lists(st.tuples(hashes, st.none() | docs), max_size=4),
)
crossref_ops = st.lists(st.one_of(revision_op, entries_op, block_op), max_size=60)


def _apply(x: Any, op: tuple[Any, ...]) -> list[CrossCheck]:
    kind, *args = op
    if kind == "revision":
        return list(x.add_revision(*args))
    if kind == "entries":
        strand, seq, tx, documented = args
        return list(x.add_block_entries(strand, seq, tx, dict(documented)))
    return list(x.add_block(*args))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crossref_ops, st.sampled_from([0, 1, 2, 3, 200_000]))
def test_crossref_like_the_reference(ops: list[tuple[Any, ...]], max_pending: int) -> None:
    python = CrossReferencer(max_pending=max_pending)
    compiled = native.CrossReferencer(max_pending, CrossCheck, Unmatched, _PASSED)
    for i, op in enumerate(ops):
        expected = _apply(python, op)
        got = _apply(compiled, op)
        assert got == expected, (i, op)
        assert all(g is _PASSED for g, e in zip(got, expected, strict=True) if e is _PASSED)
    assert compiled.unmatched() == python.unmatched()
    assert compiled.evicted == python.evicted
    assert compiled.max_pending == python.max_pending


def test_a_duplicate_of_a_failing_revision_returns_the_same_check() -> None:
    x = native.CrossReferencer(10, CrossCheck, Unmatched, _PASSED)
    h = HASHES[0]
    x.add_block("S", 7, "tx", [(h, "doc1")])
    (first,) = x.add_revision("S", 7, "doc1", 0, "tx-forged", h)
    assert not first.passed and "txId differs" in first.message
    (again,) = x.add_revision("S", 7, "doc1", 0, "tx-forged", h)
    assert again is first


chain_op = st.tuples(
    strands, st.integers(0, 12), st.sampled_from(HASHES[:3]), st.sampled_from([b"", *HASHES[:3]])
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chain_op, max_size=60), st.booleans())
def test_chain_like_the_reference(ops: list[tuple[str, int, bytes, bytes]], use_check: bool) -> None:
    python = ChainTracker()
    compiled = native.ChainTracker(LinkResult, Gap)
    for i, op in enumerate(ops):
        if use_check:
            assert compiled.check(*op) == python.check(*op), (i, op)
        else:
            assert compiled.add(*op) == python.add(*op), (i, op)
    assert compiled.gaps() == python.gaps()
    assert compiled.run_count == python.run_count
    for strand in ("S1", "S2", "S3"):
        assert compiled.span(strand) == python.span(strand)


def test_the_verifier_uses_the_compiled_state_when_installed() -> None:
    verifier = Verifier()
    assert isinstance(verifier.chain, native.ChainTracker)
    assert isinstance(verifier.crossref, native.CrossReferencer)


def test_one_switch_for_every_stage() -> None:
    from qldbstream.core import deaggregate, decode, qldb_hash
    from qldbstream.core import native as switch
    from qldbstream.io import lambda_event

    assert {"qldbstream.core.qldb_hash", "qldbstream.io.lambda_event"} <= {
        m.__name__ for m in switch.stages()
    }
    try:
        switch.use(False)
        assert decode._scan is decode.scan_record and deaggregate._parse is deaggregate.parse_aggregate
        assert lambda_event._records is None and type(Verifier().chain) is ChainTracker
        assert qldb_hash.dot is qldb_hash._dot_py and qldb_hash.merkle_root is qldb_hash._merkle_root_py
        switch.use(True)
        assert decode._scan is native.scan_record and lambda_event._records is native.lambda_records
        assert isinstance(Verifier().crossref, native.CrossReferencer)
        assert qldb_hash.dot is native.dot and qldb_hash.merkle_root is native.merkle_root
    finally:
        switch.reset()
    assert qldb_hash.dot is native.dot
    assert switch.available()
    with pytest.raises(RuntimeError, match="not installed"):
        switch.chosen(True, None, "fallback")


def test_a_stage_registered_after_a_switch_follows_it() -> None:
    import types

    from qldbstream.core import native as switch

    seen: list[bool] = []
    stage = types.ModuleType("tests.unit.a_late_stage")
    stage.native_available = lambda: True  # type: ignore[attr-defined]
    stage.use_native = seen.append  # type: ignore[attr-defined]
    try:
        switch.use(False)
        switch.register(stage)
        assert seen == [False]
        switch.reset()
        assert seen == [False, True]
    finally:
        switch.reset()
        switch._REGISTRY.pop(stage.__name__, None)
