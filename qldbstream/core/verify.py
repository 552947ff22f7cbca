"""Stage 3: verify every hash QLDB gives us (qldb-stream-format.md §5, checks V1-V9).

==== =====================================================================================
V1   KPL integrity: magic and MD5 of an aggregated Kinesis record
V2   revision hash = dot(H(metadata), H(data)); redacted: dot(H(metadata), dataHash)
V2b  deleted revision (no data, no dataHash): hash = H(metadata). **Inferred** rule: no real
     QLDB sample of a deleted revision with its hash exists; results say ``inferred``
V3   each documented revisionSummaries entry matches its REVISION_DETAILS (hash, documentId,
     blockAddress, txId) - across batches, see :mod:`qldbstream.core.crossref`
V4   Merkle root of the block's revision hashes is in entriesHashList
V5   H(transactionInfo) (and H(redactionInfo), when present) is in entriesHashList
V6   statementDigest = H(statement text) for statements without parameters (parameter values
     are not in the stream; statements with ``?`` placeholders are counted as skipped)
V7   entriesHash = Merkle root of entriesHashList
V8   blockHash = dot(entriesHash, previousBlockHash)
V9   chain continuity per strand - across batches, see :mod:`qldbstream.core.chain`
==== =====================================================================================

V10 (digest and proof) needs data from the QLDB API and lives in :mod:`qldbstream.core.proof`.

The :class:`Verifier` is stateful only for V3 and V9 and does no I/O. With qldbstream-native
installed, that state lives in the extension (``qldbstream_native.CrossReferencer`` and
``ChainTracker``, the twins of the Python classes, parity-tested op by op); a Verifier belongs to
one thread of processing at a time. Passing checks are only
counted; a failing check produces a :class:`Failure` naming the record and the two values.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass

from qldbstream.core.chain import ChainTracker, Gap, LinkResult
from qldbstream.core.crossref import _PASSED, CrossCheck, CrossReferencer, Unmatched
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.errors import DeaggregationError, DecodeError
from qldbstream.core.native import chosen
from qldbstream.core.records import Position

__all__ = ["CHECKS", "Failure", "Tally", "Verifier", "has_parameters", "native_available", "use_native"]

try:  # qldbstream-native: the V3 / V9 state in Rust, the twins of CrossReferencer and ChainTracker
    from qldbstream_native import ChainTracker as _NativeChain
    from qldbstream_native import CrossReferencer as _NativeCrossReferencer
except ImportError:  # pragma: no cover - depends on the installation (or an older extension)
    _NativeChain = _NativeCrossReferencer = None

_native_state = _NativeChain is not None


def native_available() -> bool:
    return _NativeChain is not None


def use_native(enabled: bool) -> None:
    """Whether new :class:`Verifier` objects keep V3 / V9 state in the extension (tests, benchmarks)."""
    global _native_state  # noqa: PLW0603 - one module-level switch, read when a Verifier is made
    _native_state = chosen(enabled, _NativeChain, None) is not None


CHECKS = ("V1", "V2", "V2b", "V3", "V4", "V5", "V6", "V7", "V8", "V9", "V10")
INFERRED_CHECKS = frozenset({"V2b"})


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


@dataclass(slots=True)
class Failure:
    """One failed check, with enough context to find the record and see what differed."""

    check: str
    position: Position
    message: str
    document_id: str | None = None
    version: int | None = None
    block_sequence_no: int | None = None
    expected: str | None = None
    actual: str | None = None

    @property
    def inferred(self) -> bool:
        return self.check in INFERRED_CHECKS

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "position": {
                "sequenceNumber": self.position.sequence_number,
                "subSequenceNumber": self.position.sub_sequence_number,
                "source": self.position.source,
                "shardId": self.position.shard_id,
            },
            "documentId": self.document_id,
            "version": self.version,
            "blockSequenceNo": self.block_sequence_no,
            "expected": self.expected,
            "actual": self.actual,
            "message": self.message,
            "inferred": self.inferred,
        }


class Tally:
    """Passed / failed / skipped counts per check."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {c: [0, 0, 0] for c in CHECKS}

    def add(self, check: str, passed: bool, n: int = 1) -> None:
        self.counts[check][0 if passed else 1] += n

    def skip(self, check: str, n: int = 1) -> None:
        self.counts[check][2] += n

    def as_dict(self) -> dict[str, dict[str, int]]:
        out = {}
        for check, (passed, failed, skipped) in self.counts.items():
            if passed or failed or skipped:
                entry = {"passed": passed, "failed": failed}
                if skipped:
                    entry["skipped"] = skipped
                out[check] = entry
        return out

    @property
    def failed(self) -> int:
        return sum(c[1] for c in self.counts.values())


_INTERESTING = re.compile(r"[?'\"`]|--|/\*")


def has_parameters(statement: str) -> bool:
    """True when a PartiQL statement has ``?`` placeholders outside quotes and comments."""
    if "?" not in statement:
        return False
    n = len(statement)
    m = _INTERESTING.search(statement)
    while m is not None:
        c = m.group()
        i = m.start()
        if c == "?":
            return True
        if c == "--":
            j = statement.find("\n", i)
            nxt = n if j == -1 else j + 1
        elif c == "/*":
            j = statement.find("*/", i + 2)
            nxt = n if j == -1 else j + 2
        else:  # a quoted string, quoted identifier or Ion literal: skip to its closing quote
            j = statement.find(c, i + 1)
            while j != -1 and c != "`" and j + 1 < n and statement[j + 1] == c:  # doubled quote
                j = statement.find(c, j + 2)
            if j == -1:
                return False
            nxt = j + 1
        m = _INTERESTING.search(statement, nxt)
    return False


#: Statement texts repeat (a few PartiQL templates per application): remember the answer.
_has_parameters_cached = functools.lru_cache(maxsize=4096)(has_parameters)


class Verifier:
    """Runs V1-V9 record by record; keeps the cross-record state of V3 and V9."""

    def __init__(self, max_pending: int = 200_000) -> None:
        self.tally = Tally()
        # The compiled twins have the same methods and return the same result objects.
        self.chain: ChainTracker
        self.crossref: CrossReferencer
        if _native_state:
            self.chain = _NativeChain(LinkResult, Gap)
            self.crossref = _NativeCrossReferencer(max_pending, CrossCheck, Unmatched, _PASSED)
        else:
            self.chain = ChainTracker()
            self.crossref = CrossReferencer(max_pending=max_pending)
        self.max_pending = max_pending

    # V1 ----------------------------------------------------------------------------------
    def aggregate(self, position: Position, error: DeaggregationError | None) -> list[Failure]:
        """Count V1 for an aggregated Kinesis record (``error`` set when it is not valid)."""
        if error is None:
            self.tally.add("V1", True)
            return []
        self.tally.add("V1", False)
        return [Failure("V1", position, error.message)]

    # V2-V9 -------------------------------------------------------------------------------
    def verify(self, record: JournalRecord) -> list[Failure]:
        """Run the checks that apply to ``record``; return the failures (empty: all passed).

        Raises :class:`~qldbstream.core.errors.DecodeError` (with the record's position) when a value
        cannot be hashed at all, e.g. a symbol whose text the record's symbol table lacks.
        """
        try:
            kind = type(record)  # (exact types first: isinstance() is slower on the hot path)
            if kind is RevisionDetails or (kind is not BlockSummary and isinstance(record, RevisionDetails)):
                return self._revision(record)  # type: ignore[arg-type]
            if kind is BlockSummary or isinstance(record, BlockSummary):
                return self._block(record)  # type: ignore[arg-type]
        except DecodeError as exc:
            raise exc.with_position(record.position) from None
        return []

    def _revision(self, r: RevisionDetails) -> list[Failure]:
        failures: list[Failure] = []
        counts = self.tally.counts  # [passed, failed, skipped] per check; indexed by `not ok`
        # live: dot(H(metadata), H(data)); redacted: dot(H(metadata), dataHash); deleted: H(metadata)
        expected = r.expected_hash  # computed by the scan
        check = "V2" if r.content_hash is not None else "V2b"
        ok = expected == r.hash
        counts[check][not ok] += 1
        if not ok:
            what = (
                "deleted revision's hash is not H(metadata) (inferred rule)"
                if check == "V2b"
                else "revision hash does not match its metadata and "
                + ("dataHash" if r.data_hash is not None else "data")
            )
            failures.append(self._fail(check, r, what, _b64(expected), _b64(r.hash)))
        ba = r.block_address
        for c in self.crossref.add_revision(
            ba.strand_id, ba.sequence_no, r.document_id, r.version, r.tx_id, r.hash
        ):
            counts["V3"][not c.passed] += 1
            if not c.passed:
                failures.append(
                    Failure(
                        "V3",
                        r.position,
                        c.message,
                        c.document_id,
                        c.version,
                        c.block_sequence_no,
                        c.expected,
                        c.actual,
                    )
                )
        return failures

    def _block(self, b: BlockSummary) -> list[Failure]:
        failures: list[Failure] = []
        counts = self.tally.counts
        entries = b.entries_hash_list
        seq = b.block_address.sequence_no
        # V4
        root = b.summaries_root  # computed by the scan, None when there are no summaries
        if root is not None:
            ok = root in entries
            counts["V4"][not ok] += 1
            if not ok:
                failures.append(
                    self._bfail("V4", b, "Merkle root of revisionSummaries is not in entriesHashList", root)
                )
        # V5
        for name, h in (
            ("transactionInfo", b.transaction_info_hash),
            ("redactionInfo", b.redaction_info_hash),
        ):
            if h is not None:
                ok = h in entries
                counts["V5"][not ok] += 1
                if not ok:
                    failures.append(self._bfail("V5", b, f"H({name}) is not in entriesHashList", h))
        # V6
        for k, (text, digest, h) in enumerate(b.statement_entries):
            if h == digest:
                counts["V6"][0] += 1
            elif _has_parameters_cached(text):
                counts["V6"][2] += 1
            else:
                counts["V6"][1] += 1
                failures.append(
                    Failure(
                        "V6",
                        b.position,
                        f"statementDigest of statement {k} does not match its text",
                        None,
                        None,
                        seq,
                        _b64(h),
                        _b64(digest),
                    )
                )
        # V7
        root = b.entries_root
        ok = root == b.entries_hash
        counts["V7"][not ok] += 1
        if not ok:
            failures.append(
                Failure(
                    "V7",
                    b.position,
                    "entriesHash is not the Merkle root of entriesHashList",
                    None,
                    None,
                    seq,
                    _b64(root),
                    _b64(b.entries_hash),
                )
            )
        # V8
        expected = b.chained_hash
        ok = expected == b.block_hash
        counts["V8"][not ok] += 1
        if not ok:
            failures.append(
                Failure(
                    "V8",
                    b.position,
                    "blockHash is not dot(entriesHash, previousBlockHash)",
                    None,
                    None,
                    seq,
                    _b64(expected),
                    _b64(b.block_hash),
                )
            )
        # V9
        checked = self.chain.check(b.block_address.strand_id, seq, b.block_hash, b.previous_block_hash)
        if isinstance(checked, int):  # every link passed (usually one)
            counts["V9"][0] += checked
            checked = []
        for link in checked:
            counts["V9"][not link.passed] += 1
            if not link.passed:
                failures.append(
                    Failure(
                        "V9",
                        b.position,
                        link.message,
                        None,
                        None,
                        link.sequence_no,
                        _b64(link.expected),
                        _b64(link.actual),
                    )
                )
        # V3
        documented = {h: doc for h, doc in b.summary_entries if doc is not None}
        strand = b.block_address.strand_id
        for c in self.crossref.add_block_entries(strand, seq, b.transaction_id, documented):
            counts["V3"][not c.passed] += 1
            if not c.passed:
                failures.append(
                    Failure("V3", b.position, c.message, c.document_id, c.version, seq, c.expected, c.actual)
                )
        return failures

    @staticmethod
    def _fail(check: str, r: RevisionDetails, message: str, expected: str, actual: str) -> Failure:
        return Failure(
            check,
            r.position,
            message,
            r.document_id,
            r.version,
            r.block_address.sequence_no,
            expected,
            actual,
        )

    @staticmethod
    def _bfail(check: str, b: BlockSummary, message: str, computed: bytes) -> Failure:
        return Failure(
            check,
            b.position,
            message,
            None,
            None,
            b.block_address.sequence_no,
            _b64(computed),
            "[" + ", ".join(_b64(e) for e in b.entries_hash_list) + "]",
        )
