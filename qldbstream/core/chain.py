"""V9: hash-chain continuity across blocks, per strand, across batches.

``block[n].previousBlockHash`` must equal ``block[n-1].blockHash``. Blocks arrive at least once
and in any order, spread over batches, shards and invocations, so the tracker keeps, per strand,
a sorted list of *runs*: maximal stretches of consecutive sequence numbers already received.
A run remembers only the ``previousBlockHash`` of its first block and the ``blockHash`` of its
last one, so memory grows with the number of gaps, not with the length of the stream.

* A link is checked exactly once, as soon as both of its blocks are known.
* A **break** (the hashes of two consecutive blocks disagree) is a V9 failure.
* A **gap** (sequence numbers never received between two runs) is not a failure: it is
  reported separately, because at-least-once, out-of-order delivery and partial inputs make
  gaps normal until the missing blocks arrive.
* A duplicate of a run's first or last block whose hash differs from the one remembered is a
  failure (two different blocks claim one place in the chain).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

__all__ = ["ChainTracker", "Gap", "LinkResult"]


# One per block on the hot path: slotted, not frozen (a frozen __init__ costs ~3x as much);
# treated as immutable all the same.
@dataclass(slots=True, unsafe_hash=True)
class LinkResult:
    strand_id: str
    #: the later block of the link (``sequence_no - 1`` is the earlier one)
    sequence_no: int
    passed: bool
    expected: bytes  # blockHash of block n-1
    actual: bytes  # previousBlockHash of block n
    message: str


@dataclass(frozen=True, slots=True)
class Gap:
    strand_id: str
    first_missing: int
    last_missing: int

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": "missing-blocks",
            "strandId": self.strand_id,
            "fromSequenceNo": self.first_missing,
            "toSequenceNo": self.last_missing,
            "count": self.last_missing - self.first_missing + 1,
        }


class _Run:
    __slots__ = ("first_prev", "hi", "last_hash", "lo")

    def __init__(self, lo: int, hi: int, first_prev: bytes, last_hash: bytes) -> None:
        self.lo = lo
        self.hi = hi
        self.first_prev = first_prev
        self.last_hash = last_hash


class ChainTracker:
    """Tracks the chain of every strand seen; feed it each block summary once or more."""

    def __init__(self) -> None:
        self._runs: dict[str, list[_Run]] = {}
        self._starts: dict[str, list[int]] = {}

    def add(
        self, strand_id: str, sequence_no: int, block_hash: bytes, previous_hash: bytes
    ) -> list[LinkResult]:
        """Record a block; return the links this block completes (zero, one or two)."""
        runs = self._runs.get(strand_id)
        if runs is None:  # (not setdefault: that would build an empty list for every block)
            runs = self._runs[strand_id] = []
            self._starts[strand_id] = []
        elif runs[-1].hi == sequence_no - 1:  # the usual case: the next block of the strand's last run
            last = runs[-1]
            expected = last.last_hash
            last.hi, last.last_hash = sequence_no, block_hash
            return [self._link(strand_id, sequence_no, expected, previous_hash)]
        starts = self._starts[strand_id]
        i = bisect.bisect_right(starts, sequence_no) - 1
        left = runs[i] if i >= 0 else None
        if left is not None and left.lo <= sequence_no <= left.hi:
            return self._duplicate(strand_id, left, sequence_no, block_hash, previous_hash)
        right = runs[i + 1] if i + 1 < len(runs) else None
        results: list[LinkResult] = []
        joins_left = left is not None and left.hi == sequence_no - 1
        joins_right = right is not None and right.lo == sequence_no + 1
        if joins_left:
            assert left is not None
            results.append(self._link(strand_id, sequence_no, left.last_hash, previous_hash))
        if joins_right:
            assert right is not None
            results.append(self._link(strand_id, sequence_no + 1, block_hash, right.first_prev))
        if joins_left and joins_right:
            assert left is not None and right is not None
            left.hi, left.last_hash = right.hi, right.last_hash
            del runs[i + 1]
            del starts[i + 1]
        elif joins_left:
            assert left is not None
            left.hi, left.last_hash = sequence_no, block_hash
        elif joins_right:
            assert right is not None
            right.lo, right.first_prev = sequence_no, previous_hash
            starts[i + 1] = sequence_no
        else:
            runs.insert(i + 1, _Run(sequence_no, sequence_no, previous_hash, block_hash))
            starts.insert(i + 1, sequence_no)
        return results

    def check(
        self, strand_id: str, sequence_no: int, block_hash: bytes, previous_hash: bytes
    ) -> int | list[LinkResult]:
        """:meth:`add`, but only the number of links when every one of them passed (the hot path)."""
        links = self.add(strand_id, sequence_no, block_hash, previous_hash)
        return len(links) if all(link.passed for link in links) else links

    @staticmethod
    def _link(strand_id: str, seq: int, expected: bytes, actual: bytes) -> LinkResult:
        if expected == actual:
            return LinkResult(strand_id, seq, True, expected, actual, "")
        return LinkResult(
            strand_id,
            seq,
            False,
            expected,
            actual,
            f"chain break: previousBlockHash of block {seq} does not equal blockHash of block {seq - 1}",
        )

    @staticmethod
    def _duplicate(strand: str, run: _Run, seq: int, block_hash: bytes, prev: bytes) -> list[LinkResult]:
        if seq == run.hi and block_hash != run.last_hash:
            return [
                LinkResult(
                    strand,
                    seq,
                    False,
                    run.last_hash,
                    block_hash,
                    f"two different blocks claim sequence number {seq} (blockHash differs)",
                )
            ]
        if seq == run.lo and prev != run.first_prev:
            return [
                LinkResult(
                    strand,
                    seq,
                    False,
                    run.first_prev,
                    prev,
                    f"two different blocks claim sequence number {seq} (previousBlockHash differs)",
                )
            ]
        return []

    def gaps(self) -> list[Gap]:
        """Sequence numbers never received between the first and the last block seen, per strand."""
        out = []
        for strand, runs in self._runs.items():
            for a, b in itertools.pairwise(runs):
                out.append(Gap(strand, a.hi + 1, b.lo - 1))
        return out

    def span(self, strand_id: str) -> tuple[int, int] | None:
        runs = self._runs.get(strand_id)
        if not runs:
            return None
        return runs[0].lo, runs[-1].hi

    @property
    def run_count(self) -> int:
        """How many runs are remembered (a measure of the tracker's memory)."""
        return sum(len(r) for r in self._runs.values())
