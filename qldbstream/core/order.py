"""Journal order across shards (the standalone worker): deliver block after block, per strand.

QLDB commits blocks in sequence-number order per strand, but its partition keys scatter them over
shards, and a worker reads its shards one batch at a time. With ``order = journal`` the gate
(:mod:`qldbstream.core.admit`) holds a verified block - its summary and its revisions - until the
previous block of its strand was released, so handlers see the journal's order, merged over every
shard. A block is released early only when its predecessor is known to be missing:

* **the watermark**: every shard has been read past the time the waiting block arrived (plus a
  second of skew: QLDB writes blocks in order, Kinesis stamps arrival per shard) - a block before
  it would have arrived by then, so it is a *gap* (reported, counted), or - when nothing was
  released yet - the first block of the stream;
* **the gap timeout**: a block waited ``gap_timeout`` seconds (a shard lags or is stuck);
* **the end of the input** (``drain``).

A block older than one already released (it arrived after its gap was given up) is released at
once: late, never dropped. This module only decides; it holds no record and does no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SKEW", "JournalOrder"]

log = logging.getLogger("qldbstream.order")

#: seconds of arrival-time skew tolerated between shards
SKEW = 1.0


@dataclass
class _Waiting:
    arrival: float
    since: float


@dataclass
class JournalOrder:
    """Which blocks of each strand may be released now."""

    clock: Callable[[], float]
    gap_timeout: float = 30.0
    #: the lowest ``ApproximateArrivalTimestamp`` up to which every shard has been read (the worker
    #: sets it before each batch; ``inf`` once every shard is at its tip)
    watermark: float = float("-inf")
    #: strand -> the next sequence number to release (absent: nothing released yet)
    next: dict[str, int] = field(default_factory=dict)
    #: strand -> sequence number -> when the verified block arrived and began to wait
    waiting: dict[str, dict[int, _Waiting]] = field(default_factory=dict)
    #: (strand, first missing, last missing) of every gap given up on
    gaps: list[tuple[str, int, int]] = field(default_factory=list)

    def ready(self, strand: str, seq: int) -> bool:
        """May block ``seq`` be released now (its predecessor was, or it is late)?"""
        nxt = self.next.get(strand)
        return nxt is not None and seq <= nxt

    def wait(self, strand: str, seq: int, arrival: float | None) -> None:
        """A verified block that is not ready: it waits (its records are parked by the caller)."""
        self.waiting.setdefault(strand, {}).setdefault(
            seq, _Waiting(float("-inf") if arrival is None else arrival, self.clock())
        )

    def released(self, strand: str, seq: int) -> None:
        """Block ``seq`` was released: the next one's turn comes (the caller cascades)."""
        nxt = self.next.get(strand)
        if nxt is None or seq >= nxt:
            self.next[strand] = seq + 1
        self.waiting.get(strand, {}).pop(seq, None)

    def due(self, *, drain: bool = False) -> list[tuple[str, int]]:
        """Waiting blocks to release now because their predecessor is missing (gaps given up)."""
        out = []
        now = self.clock()
        for strand, waiting in self.waiting.items():
            if not waiting:
                continue
            lowest = min(waiting)
            w = waiting[lowest]
            if not (drain or self.watermark >= w.arrival + SKEW or now - w.since >= self.gap_timeout):
                continue
            nxt = self.next.get(strand)
            if nxt is not None and lowest > nxt:
                self.gaps.append((strand, nxt, lowest - 1))
                log.warning(
                    "journal order: blocks %d-%d of strand %s did not arrive; going on with block %d",
                    nxt,
                    lowest - 1,
                    strand,
                    lowest,
                )
            out.append((strand, lowest))
        return out

    def holding(self) -> int:
        return sum(len(w) for w in self.waiting.values())
