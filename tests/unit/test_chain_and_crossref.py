"""V9 chain tracking and V3 cross-record matching, including out-of-order and duplicate delivery."""

from __future__ import annotations

import hashlib
import random

import pytest

from qldbstream.core.chain import ChainTracker
from qldbstream.core.crossref import CrossReferencer
from qldbstream.core.verify import has_parameters


def chain(n: int, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    """(sequenceNo, blockHash, previousBlockHash) for a consistent chain."""
    out, prev = [], hashlib.sha256(b"genesis").digest()
    for seq in range(start, start + n):
        h = hashlib.sha256(prev + seq.to_bytes(8, "big")).digest()
        out.append((seq, h, prev))
        prev = h
    return out


@pytest.mark.parametrize("seed", range(20))
def test_every_link_checked_once_in_any_order(seed: int) -> None:
    blocks = chain(200, start=1000)
    delivered = blocks + random.Random(seed).sample(blocks, 50)  # with duplicates
    random.Random(seed).shuffle(delivered)
    tracker = ChainTracker()
    links = [r for s, h, p in delivered for r in tracker.add("S", s, h, p)]
    assert len(links) == 199 and all(r.passed for r in links)
    assert sorted(r.sequence_no for r in links) == list(range(1001, 1200))
    assert tracker.gaps() == [] and tracker.run_count == 1


def test_gap_is_not_a_break_and_closes_when_the_block_arrives() -> None:
    blocks = chain(10)
    tracker = ChainTracker()
    for s, h, p in blocks[:4] + blocks[7:]:
        assert all(r.passed for r in tracker.add("S", s, h, p))
    (gap,) = tracker.gaps()
    assert (gap.first_missing, gap.last_missing) == (4, 6)
    for s, h, p in blocks[4:7]:
        tracker.add("S", s, h, p)
    assert tracker.gaps() == []


def test_break_is_a_failure_on_the_later_block() -> None:
    blocks = chain(5)
    s, h, _ = blocks[3]
    blocks[3] = (s, h, b"\x01" * 32)  # previousBlockHash of block 3 tampered
    tracker = ChainTracker()
    results = [r for s, h, p in reversed(blocks) for r in tracker.add("S", s, h, p)]
    failed = [r for r in results if not r.passed]
    assert [r.sequence_no for r in failed] == [3]
    assert "chain break" in failed[0].message
    assert len(results) == 4


def test_strands_are_independent_and_conflicting_duplicates_fail() -> None:
    tracker = ChainTracker()
    a, b = chain(3), chain(3, start=0)
    for s, h, p in a:
        tracker.add("A", s, h, p)
    for s, h, p in b:
        tracker.add("B", s, h, p)
    assert tracker.run_count == 2
    (conflict,) = tracker.add("A", 2, b"\x02" * 32, a[2][2])
    assert not conflict.passed and "two different blocks" in conflict.message


def test_crossref_in_either_order_and_across_batches() -> None:
    x = CrossReferencer()
    h1, h2, sys_h = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert x.add_revision("S", 7, "doc1", 0, "tx", h1) == ()  # block not seen yet: wait
    results = x.add_block("S", 7, "tx", [(h1, "doc1"), (sys_h, None), (h2, "doc2")])
    assert [r.passed for r in results] == [True]
    (r2,) = x.add_revision("S", 7, "doc2", 3, "tx", h2)
    assert r2.passed
    assert x.unmatched() == []
    assert x.add_revision("S", 7, "doc2", 3, "tx", h2) == ()  # duplicate delivery: judged once


@pytest.mark.parametrize(
    ("doc", "tx", "rev_hash", "message"),
    [
        ("doc1", "tx", b"\x09" * 32, "not among block 7's revisionSummaries"),
        ("other", "tx", b"\x01" * 32, "lists this revision hash for document doc1"),
        ("doc1", "tx-other", b"\x01" * 32, "txId differs"),
    ],
)
def test_crossref_mismatches(doc: str, tx: str, rev_hash: bytes, message: str) -> None:
    x = CrossReferencer()
    x.add_block("S", 7, "tx", [(b"\x01" * 32, "doc1")])
    (r,) = x.add_revision("S", 7, doc, 1, tx, rev_hash)
    assert not r.passed and message in r.message


def test_crossref_memory_is_bounded_and_evictions_are_reported() -> None:
    x = CrossReferencer(max_pending=10)
    for i in range(25):
        x.add_revision("S", i, f"doc{i}", 0, "tx", i.to_bytes(32, "big"))
    unmatched = x.unmatched()
    assert len(unmatched) == 25 and {u.kind for u in unmatched} == {"missing-block-summary"}
    assert len(x.evicted) == 15


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM T WHERE a = ?", True),
        ("INSERT INTO T ?", True),
        ("SELECT * FROM T WHERE a = '?'", False),
        ("SELECT * FROM T WHERE a = 'it''s ?'", False),
        ('SELECT "odd?name" FROM T', False),
        ("INSERT INTO Person << {'a': `1963-08-19T`} >>", False),
        ("SELECT 1 FROM T -- why?\n", False),
        ("SELECT /* ? */ 1 FROM T", False),
        ("SELECT /* x */ ? FROM T", True),
    ],
)
def test_has_parameters(statement: str, expected: bool) -> None:
    assert has_parameters(statement) is expected


def test_a_duplicate_of_a_failing_revision_fails_again() -> None:
    x = CrossReferencer()
    h = b"\x01" * 32
    x.add_block("S", 7, "tx", [(h, "doc1")])
    (first,) = x.add_revision("S", 7, "doc1", 0, "tx-forged", h)
    assert not first.passed
    (again,) = x.add_revision("S", 7, "doc1", 0, "tx-forged", h)  # the same record delivered twice
    assert again is first
