"""An independent forge of QLDB journal streams as QLDB delivers them through Kinesis (test data).

Nothing here comes from :mod:`qldbstream` except the :class:`~qldbstream.core.records.KinesisRecord`
type the helpers build: records are written by amazon-ion (binary, one Ion stream per user
record), every hash is computed with PyPI ``ionhash`` and :func:`tests.support.oracles.reference_dot`,
and KPL aggregates are built by ``aws_kinesis_agg``. The shapes follow
``docs/qldb-stream-format.md`` and the real samples (``fixtures/qldb-real``).

Three steps, each seeded and deterministic:

* :func:`build_ledger` - a small bank ledger on one strand (Customers, Accounts, Transactions with
  decimals, timestamps and nested structs); documents are inserted, updated several times and
  some deleted; each transaction touches 1-3 documents (one revision per document: its final
  state), sometimes of two tables; blocks chain from a genesis ``previousBlockHash``.
* :func:`forge` - the journal records (CONTROL CREATED, then per block its BLOCK_SUMMARY and its
  REVISION_DETAILS, CONTROL COMPLETED), with the forgery *ladder* applied to chosen blocks, and
  the :class:`GroundTruth`.
* :func:`deliver` - Kinesis: N shards with even hash-key ranges, the shard of a record chosen by
  MD5 of its partition key, KPL aggregation per block or none, PutRecords-retry duplicates,
  bounded reordering within a shard, per-shard sequence numbers and arrival times.

The ladder (each rung makes exactly one check fail, named as qldbstream names it):

==============  ====================================================================================
``V2``          a revision's data changed, nothing recomputed
``V3``          ... and its revision hash recomputed (the block summary still lists the old hash)
``V4``          ... and the block's ``revisionSummaries`` entry patched
``V7``          ... and ``entriesHashList`` patched with the new revisions Merkle root
``V8``          ... and ``entriesHash`` recomputed
``V9``          ... and ``blockHash`` recomputed: only the link to the next block breaks
``V5``          a statement text in ``transactionInfo`` changed, its ``statementDigest`` recomputed
``blockAddress``  a revision's ``blockAddress`` names another (authentic) block of the stream
``tableInfo``   a revision's ``tableInfo.tableName`` names another table
==============  ====================================================================================

Assumptions beyond the published samples (marked [INF] in the format note): a deleted revision's
hash is ``H(metadata)``; a DDL block (CREATE TABLE) has one hash-only revision summary and
``documents: {}``; CONTROL records have a random 64-hex partition key and, when aggregating, are
sent as one-record aggregates.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from amazon.ion import simpleion
from amazon.ion.core import OffsetTZInfo, Timestamp, TimestampPrecision
from aws_kinesis_agg.aggregator import AggRecord

from qldbstream.core.records import KinesisRecord
from tests.support.oracles import import_ionhash, reference_dot

__all__ = [
    "BLOCK_RUNGS",
    "CHAIN_RUNGS",
    "MODES",
    "RUNGS",
    "Delivery",
    "Forgery",
    "GroundTruth",
    "Journal",
    "Ledger",
    "RevisionFact",
    "Shard",
    "ShardRecord",
    "StreamRecord",
    "build_ledger",
    "check_record",
    "check_stream",
    "deliver",
    "dot",
    "forge",
    "forge_stream",
    "hash_key",
    "ion_hash",
    "merkle_root",
    "shard_ranges",
    "statement_digest",
]

RUNGS = ("V2", "V3", "V4", "V7", "V8", "V9", "V5", "blockAddress", "tableInfo")
#: rungs that alter the block (every revision of the block is then not vouched for)
BLOCK_RUNGS = frozenset({"V4", "V5", "V7", "V8", "V9"})
#: rungs whose failure is only the V9 link: withheld under ``chain-confirmed`` only
CHAIN_RUNGS = frozenset({"V9"})
MODES = ("verified", "chain-confirmed")
_DATA_RUNGS = ("V2", "V3", "V4", "V7", "V8", "V9")

# --- hashing (ionhash + reference_dot) ----------------------------------------------------------

_oracle: Callable[[Any], bytes] | None = None


def ion_hash(value: Any) -> bytes:
    """Ion hash (SHA-256, PyPI ionhash) of a Python/amazon-ion value, as written in binary Ion."""
    global _oracle  # noqa: PLW0603 - the oracle is imported once, on first use
    if _oracle is None:
        _oracle = import_ionhash()
    return _oracle(simpleion.loads(simpleion.dumps(value, binary=True)))


dot = reference_dot


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Adjacent pairs combined with ``dot``; an unpaired last node is carried up (empty list: b"")."""
    level = list(hashes)
    if not level:
        return b""
    while len(level) > 1:
        nxt = [dot(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def statement_digest(text: str, params: Sequence[Any] = ()) -> bytes:
    """``fold(dot, [H(text), H(p1), ..., H(pn)])`` (pyqldb's per-statement hash)."""
    digest = ion_hash(text)
    for p in params:
        digest = dot(digest, ion_hash(p))
    return digest


def _revision_hash(revision: dict[str, Any]) -> bytes:
    meta = ion_hash(revision["metadata"])
    if "data" in revision:
        return dot(meta, ion_hash(revision["data"]))
    if "dataHash" in revision:
        return dot(meta, revision["dataHash"])
    return meta  # a deleted revision [INF]


# --- the ledger model ---------------------------------------------------------------------------

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UTC = OffsetTZInfo(timedelta(0))
_TABLES = ("Customers", "Accounts", "Transactions")
_CITIES = ("Lisbon", "Porto", "Leeds", "Gent", "Cork", "Turku", "Graz")


def _ms_timestamp(epoch_ms: int) -> Timestamp:
    """A millisecond-precision UTC Ion timestamp (three fraction digits kept, as QLDB writes them)."""
    dt = datetime.fromtimestamp(epoch_ms // 1000, UTC)
    ms = epoch_ms % 1000
    return Timestamp(
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        ms * 1000,
        precision=TimestampPrecision.SECOND,
        fractional_seconds=Decimal(ms).scaleb(-3),
        tzinfo=_UTC,
    )


def _copy(value: Any) -> Any:
    """A deep copy of nested dicts and lists (amazon-ion timestamps cannot be deep-copied; they are
    immutable, as are the other scalars, so they are shared)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


@dataclass
class _Doc:
    table: str
    document_id: str
    data: dict[str, Any] | None
    version: int = -1  # last committed version
    deleted: bool = False


@dataclass
class _Block:
    """One block as Python values: the BLOCK_SUMMARY payload and its REVISION_DETAILS payloads."""

    sequence_no: int
    payload: dict[str, Any]
    revisions: list[dict[str, Any]]
    #: the parameters of each statement (not in the stream; lets a test check every digest)
    params: list[list[Any]]

    @property
    def ddl(self) -> bool:
        return not self.revisions


@dataclass
class Ledger:
    """An authentic ledger: one strand of blocks, each with the values QLDB would stream."""

    seed: int
    stream_arn: str
    strand_id: str
    table_ids: dict[str, str]
    genesis_hash: bytes
    blocks: list[_Block]

    def block(self, sequence_no: int) -> _Block:
        return next(b for b in self.blocks if b.sequence_no == sequence_no)


class _Builder:
    def __init__(self, seed: int, start_sequence_no: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.strand_id = self.ident()
        self.ledger_name = "forge-bank"
        self.stream_arn = f"arn:aws:qldb:eu-west-1:123456789012:stream/{self.ledger_name}/{self.ident()}"
        self.table_ids = {t: self.ident() for t in _TABLES}
        self.genesis = bytes(rng.getrandbits(8) for _ in range(32))
        self.previous = self.genesis
        self.seq = start_sequence_no
        self.now_ms = 1_714_557_600_000 + rng.randrange(86_400_000)  # 2024-05-01 + up to a day
        self.blocks: list[_Block] = []
        self.docs: dict[str, list[_Doc]] = {t: [] for t in _TABLES}
        self.counters = dict.fromkeys(_TABLES, 0)

    def ident(self) -> str:
        return "".join(self.rng.choice(_BASE62) for _ in range(22))

    def random_hash(self) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(32))

    # one transaction = one block ------------------------------------------------------------
    def commit(
        self,
        statements: list[tuple[str, list[Any]]],
        touched: list[tuple[_Doc, list[int]]],
        system_revisions: int = 0,
    ) -> _Block:
        rng = self.rng
        tx_id = self.ident()
        self.now_ms += rng.randrange(300, 5000)
        start = self.now_ms
        stmts = []
        for k, (text, params) in enumerate(statements):
            start += rng.randrange(3, 30) if k else 0
            stmts.append(
                {
                    "statement": text,
                    "startTime": _ms_timestamp(start),
                    "statementDigest": statement_digest(text, params),
                }
            )
        tx_ms = start + rng.randrange(5, 30)
        block_ms = tx_ms + rng.randrange(2, 25)
        self.now_ms = block_ms
        address = {"strandId": self.strand_id, "sequenceNo": self.seq}
        revisions: list[dict[str, Any]] = []
        documents: dict[str, Any] = {}
        for doc, indexes in touched:
            doc.version += 1
            revision: dict[str, Any] = {"blockAddress": dict(address), "hash": b""}
            if not doc.deleted:
                assert doc.data is not None
                revision["data"] = _copy(doc.data)
            revision["metadata"] = {
                "id": doc.document_id,
                "version": doc.version,
                "txTime": _ms_timestamp(tx_ms),
                "txId": tx_id,
            }
            revision["hash"] = _revision_hash(revision)
            table = {"tableName": doc.table, "tableId": self.table_ids[doc.table]}
            revisions.append({"tableInfo": table, "revision": revision})
            documents[doc.document_id] = {**table, "statements": indexes}
        summaries: list[dict[str, Any]] = [{"hash": self.random_hash()} for _ in range(system_revisions)]
        summaries += [
            {"hash": r["revision"]["hash"], "documentId": r["revision"]["metadata"]["id"]} for r in revisions
        ]
        info = {"statements": stmts, "documents": documents}
        entries = [
            self.random_hash(),
            merkle_root([s["hash"] for s in summaries]),
            self.random_hash(),
            ion_hash(info),
        ]
        entries_hash = merkle_root(entries)
        block_hash = dot(entries_hash, self.previous)
        payload = {
            "blockAddress": dict(address),
            "transactionId": tx_id,
            "blockTimestamp": _ms_timestamp(block_ms),
            "blockHash": block_hash,
            "entriesHash": entries_hash,
            "previousBlockHash": self.previous,
            "entriesHashList": entries,
            "transactionInfo": info,
            "revisionSummaries": summaries,
        }
        block = _Block(self.seq, payload, revisions, [_copy(list(p)) for _, p in statements])
        self.blocks.append(block)
        self.previous = block_hash
        self.seq += 1
        return block

    # documents -----------------------------------------------------------------------------
    def new_doc(self, table: str, data: dict[str, Any]) -> _Doc:
        doc = _Doc(table, self.ident(), data)
        self.docs[table].append(doc)
        return doc

    def live(self, table: str) -> list[_Doc]:
        return [d for d in self.docs[table] if not d.deleted]

    def next_id(self, table: str, prefix: str, width: int) -> str:
        self.counters[table] += 1
        return f"{prefix}-{self.counters[table]:0{width}d}"

    # transaction kinds -----------------------------------------------------------------------
    def ddl(self, table: str) -> None:
        self.commit([(f"CREATE TABLE {table}", [])], [], system_revisions=1)

    def onboard(self) -> None:
        rng = self.rng
        cid = self.next_id("Customers", "CUS", 4)
        first = rng.choice(("Ana", "Bo", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana"))
        customer = {
            "customerId": cid,
            "name": {"first": first, "last": rng.choice(("Silva", "Berg", "Okafor", "Novak", "Reyes"))},
            "email": f"{first.lower()}.{cid.lower()}@example.org",
            "dateOfBirth": Timestamp(
                rng.randrange(1950, 2004),
                rng.randrange(1, 13),
                rng.randrange(1, 29),
                precision=TimestampPrecision.DAY,
            ),
            "address": {"street": f"{rng.randrange(1, 200)} Harbour Road", "city": rng.choice(_CITIES)},
            "kyc": {"verified": rng.random() < 0.8, "checkedAt": _ms_timestamp(self.now_ms - 86_400_000)},
            "tags": ["retail"] if rng.random() < 0.7 else ["retail", "premium"],
        }
        account = self._account(cid)
        c, a = self.new_doc("Customers", customer), self.new_doc("Accounts", account)
        self.commit(
            [
                ("SELECT customerId FROM Customers AS c WHERE c.email = ?", [customer["email"]]),
                ("INSERT INTO Customers ?", [customer]),
                ("INSERT INTO Accounts ?", [account]),
            ],
            [(c, [1]), (a, [2])],
        )

    def _account(self, customer_id: str) -> dict[str, Any]:
        return {
            "accountId": self.next_id("Accounts", "ACC", 4),
            "customerId": customer_id,
            "currency": "EUR",
            "balance": _money(self.rng.randrange(0, 50_000)),
            "status": "open",
            "openedAt": _ms_timestamp(self.now_ms),
            "limits": {"daily": _money(100_000), "monthly": _money(1_000_000)},
            "lastTx": None,
        }

    def open_account(self) -> None:
        """INSERT then UPDATE of one new document in one transaction: a single version 0."""
        customer = self.rng.choice(self.live("Customers"))
        assert customer.data is not None
        account = self._account(customer.data["customerId"])
        doc = self.new_doc("Accounts", account)
        insert = _copy(account)
        account["iban"] = f"PT50{self.rng.randrange(10**20):020d}"
        self.commit(
            [
                ("INSERT INTO Accounts ?", [insert]),
                (
                    "UPDATE Accounts AS a SET a.iban = ? WHERE a.accountId = ?",
                    [account["iban"], account["accountId"]],
                ),
            ],
            [(doc, [0, 1])],
        )

    def _payment(self, kind: str, src: _Doc | None, dst: _Doc, amount: Decimal) -> dict[str, Any]:
        rng = self.rng
        assert dst.data is not None and (src is None or src.data is not None)
        return {
            "txRef": self.next_id("Transactions", "TX", 6),
            "kind": kind,
            "from": None if src is None or src.data is None else src.data["accountId"],
            "to": dst.data["accountId"],
            "amount": amount,
            "currency": "EUR",
            "at": _ms_timestamp(self.now_ms),
            "memo": rng.choice(("rent", "groceries", "salary", "refund", "")),
            "fees": [] if rng.random() < 0.5 else [{"kind": "fx", "amount": _money(rng.randrange(1, 300))}],
        }

    def _credit(self, doc: _Doc, amount: Decimal, tx_ref: str) -> None:
        assert doc.data is not None
        doc.data["balance"] += amount
        doc.data["lastTx"] = {"txRef": tx_ref, "amount": amount}

    def deposit(self) -> None:
        """One account updated, one transaction inserted: two revisions of two tables."""
        dst = self.rng.choice(self.live("Accounts"))
        amount = _money(self.rng.randrange(100, 200_000))
        payment = self._payment("deposit", None, dst, amount)
        self._credit(dst, amount, payment["txRef"])
        assert dst.data is not None
        t = self.new_doc("Transactions", payment)
        self.commit(
            [
                ("UPDATE Accounts AS a SET a.balance = ?, a.lastTx = ? WHERE a.accountId = ?",
                 [dst.data["balance"], dst.data["lastTx"], dst.data["accountId"]]),
                ("INSERT INTO Transactions ?", [payment]),
            ],
            [(dst, [0, 0]), (t, [1])],
        )  # fmt: skip

    def transfer(self) -> None:
        """Two accounts updated, one transaction inserted: three revisions of two tables."""
        src, dst = self.rng.sample(self.live("Accounts"), 2)
        amount = _money(self.rng.randrange(100, 20_000))
        payment = self._payment("transfer", src, dst, amount)
        self._credit(src, -amount, payment["txRef"])
        self._credit(dst, amount, payment["txRef"])
        assert src.data is not None and dst.data is not None
        t = self.new_doc("Transactions", payment)
        update = "UPDATE Accounts AS a SET a.balance = ?, a.lastTx = ? WHERE a.accountId = ?"
        self.commit(
            [
                ("SELECT balance FROM Accounts AS a WHERE a.accountId = ?", [src.data["accountId"]]),
                (update, [src.data["balance"], src.data["lastTx"], src.data["accountId"]]),
                (update, [dst.data["balance"], dst.data["lastTx"], dst.data["accountId"]]),
                ("INSERT INTO Transactions ?", [payment]),
            ],
            [(src, [1, 1]), (dst, [2, 2]), (t, [3])],
        )

    def move(self) -> None:
        doc = self.rng.choice(self.live("Customers"))
        assert doc.data is not None
        doc.data["address"] = {
            "street": f"{self.rng.randrange(1, 200)} Mill Lane",
            "city": self.rng.choice(_CITIES),
            "since": _ms_timestamp(self.now_ms),
        }
        text = "UPDATE Customers AS c SET c.address = ? WHERE c.customerId = ?"
        self.commit([(text, [doc.data["address"], doc.data["customerId"]])], [(doc, [0])])

    def freeze(self) -> None:
        """A statement without parameters (its digest is H(text): V6 can check it)."""
        doc = self.rng.choice(self.live("Accounts"))
        assert doc.data is not None
        doc.data["status"] = "frozen"
        text = f"UPDATE Accounts AS a SET a.status = 'frozen' WHERE a.accountId = '{doc.data['accountId']}'"
        self.commit([(text, [])], [(doc, [0])])

    def close(self) -> None:
        """An account deleted: a revision with metadata only."""
        accounts = [d for d in self.live("Accounts") if d.version >= 1] or self.live("Accounts")
        doc = self.rng.choice(accounts)
        assert doc.data is not None
        doc.deleted = True
        self.commit(
            [("DELETE FROM Accounts AS a WHERE a.accountId = ?", [doc.data["accountId"]])], [(doc, [0])]
        )

    def purge(self) -> None:
        doc = self.rng.choice(self.live("Transactions"))
        assert doc.data is not None
        doc.deleted = True
        self.commit(
            [(f"DELETE FROM Transactions AS t WHERE t.txRef = '{doc.data['txRef']}'", [])], [(doc, [0])]
        )


def build_ledger(
    seed: int = 0, *, transactions: int = 32, ddl: bool = True, start_sequence_no: int = 7
) -> Ledger:
    """An authentic ledger of about ``transactions`` user transactions (at least 10), seeded.

    With ``ddl`` the stream starts with one CREATE TABLE block per table (hash-only revision
    summaries, no REVISION_DETAILS). Every run has deletes of both kinds, documents with several
    versions, blocks with 1, 2 and 3 revisions, and statements with and without parameters.
    """
    b = _Builder(seed, start_sequence_no)
    if ddl:
        for table in _TABLES:
            b.ddl(table)
    plan = ["onboard", "onboard", "onboard", "deposit", "transfer", "freeze", "open_account", "move"]
    kinds = ("deposit", "transfer", "transfer", "deposit", "move", "open_account", "onboard", "freeze")
    while len(plan) < max(transactions, 10) - 3:
        plan.append(b.rng.choice(kinds))
    plan.insert(len(plan) * 2 // 3, "close")
    plan.insert(len(plan) * 3 // 4, "purge")
    plan.append("deposit")  # a last block with revisions
    for kind in plan:
        if kind in ("transfer", "close") and len(b.live("Accounts")) < 3:
            kind = "onboard"
        getattr(b, kind)()
    return Ledger(seed, b.stream_arn, b.strand_id, b.table_ids, b.genesis, b.blocks)


# --- journal records and the forgery ladder -----------------------------------------------------


@dataclass(frozen=True)
class StreamRecord:
    """One user record as QLDB puts it: one Ion binary stream and its partition key."""

    kind: str  # "CONTROL" | "BLOCK_SUMMARY" | "REVISION_DETAILS"
    data: bytes
    partition_key: str
    sequence_no: int | None = None  # the block (for a revision: the one its blockAddress names)
    document_id: str | None = None
    version: int | None = None
    control: str | None = None  # "CREATED" | "COMPLETED"
    #: seconds since the epoch: the block's commit time (CONTROL: just before / after the stream)
    time: float = 0.0


@dataclass(frozen=True)
class Forgery:
    rung: str
    sequence_no: int  # the forged block, or the block of the forged revision
    document_id: str | None = None  # the revision whose record was altered (None for V5)
    version: int | None = None
    original_hash: bytes | None = None
    forged_hash: bytes | None = None
    detail: str = ""


@dataclass(frozen=True)
class RevisionFact:
    """What the ground truth knows of one REVISION_DETAILS record of the stream."""

    document_id: str
    version: int
    table_name: str  # the authentic table
    sequence_no: int  # the block that really committed it
    hash: bytes  # revision.hash as written in the stream
    authentic_hash: bytes  # the hash QLDB computed
    deleted: bool
    #: the rung that altered this revision's own record (None: the record is QLDB's)
    forged_by: str | None = None
    #: the block-level rung applied to its block (V4, V5, V7, V8, V9), if any
    block_rung: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.document_id, self.version)

    @property
    def authentic(self) -> bool:
        """The record and its block are exactly as QLDB wrote them."""
        return self.forged_by is None and self.block_rung is None


@dataclass
class GroundTruth:
    revisions: list[RevisionFact]
    forgeries: list[Forgery]
    #: every block's sequence number, in journal order, and the block-level rung of forged ones
    blocks: list[int]
    block_rungs: dict[int, str]
    #: statement parameters per (block, statement index): not in the stream
    statement_params: dict[tuple[int, int], list[Any]] = field(default_factory=dict)

    def fact(self, document_id: str, version: int) -> RevisionFact:
        return next(f for f in self.revisions if f.document_id == document_id and f.version == version)

    def authentic(self) -> list[RevisionFact]:
        return [f for f in self.revisions if f.authentic]

    def withheld(self, mode: str = "verified") -> dict[tuple[str, int], str]:
        """The revisions that must not be delivered in ``mode``, each with the rung that forbids it.

        A revision whose own record was forged, and every revision of a block forged at block
        level (V4, V5, V7, V8); V9 blocks only under ``chain-confirmed`` (in ``verified`` mode a
        V9 block - forged data and all - is delivered and the broken link only reported).
        """
        assert mode in MODES, mode
        out: dict[tuple[str, int], str] = {}
        for f in self.revisions:
            rung = f.block_rung or f.forged_by
            if rung is None or (rung in CHAIN_RUNGS and mode != "chain-confirmed"):
                continue
            out[f.key] = rung
        return out

    def awaiting(self, mode: str = "verified") -> list[RevisionFact]:
        """Under ``chain-confirmed``: revisions of the last block, which no successor can confirm."""
        if mode != "chain-confirmed" or not self.blocks:
            return []
        withheld = self.withheld(mode)
        return [f for f in self.revisions if f.sequence_no == self.blocks[-1] and f.key not in withheld]

    def doubtful(self, mode: str = "verified") -> list[RevisionFact]:
        """Under ``chain-confirmed``: authentic revisions whose only confirmation is an intact link
        from a successor that fails its own checks (V4/V5/V7/V8). A gate may deliver or hold them."""
        if mode != "chain-confirmed":
            return []
        bad = {s - 1 for s, r in self.block_rungs.items() if r in BLOCK_RUNGS - CHAIN_RUNGS}
        withheld = self.withheld(mode)
        return [f for f in self.revisions if f.sequence_no in bad and f.key not in withheld]

    def deliverable(self, mode: str = "verified") -> list[RevisionFact]:
        """What a correct consumer delivers in ``mode`` (journal order), ``doubtful`` ones included."""
        withheld = self.withheld(mode)
        waiting = {f.key for f in self.awaiting(mode)}
        return [f for f in self.revisions if f.key not in withheld and f.key not in waiting]

    def final_state(self, mode: str = "verified") -> dict[str, RevisionFact]:
        """Per document, the highest deliverable version (a deleted one included)."""
        out: dict[str, RevisionFact] = {}
        for f in self.deliverable(mode):
            if f.document_id not in out or f.version > out[f.document_id].version:
                out[f.document_id] = f
        return out


@dataclass
class Journal:
    stream_arn: str
    strand_id: str
    records: list[StreamRecord]  # journal order
    truth: GroundTruth

    def user_records(self, kind: str | None = None) -> list[StreamRecord]:
        return [r for r in self.records if kind is None or r.kind == kind]


def _dump(arn: str, record_type: str, payload: dict[str, Any]) -> bytes:
    data: bytes = simpleion.dumps(
        {"qldbStreamArn": arn, "recordType": record_type, "payload": payload}, binary=True
    )
    return data


def _tamper(data: dict[str, Any]) -> None:
    """A believable forgery of a document: more money, or a different customer."""
    for name in ("balance", "amount"):
        if name in data:
            data[name] += _money(1_000_000)
            return
    data["email"] = "mallory@example.net"


class _Forger:
    """Applies the ladder to deep copies of the ledger's blocks."""

    def __init__(self, ledger: Ledger, seed: int) -> None:
        self.ledger = ledger
        self.rng = random.Random(seed * 7919 + 17)
        self.blocks = [
            _Block(b.sequence_no, _copy(b.payload), _copy(b.revisions), b.params) for b in ledger.blocks
        ]
        self.forgeries: list[Forgery] = []
        self.revision_rungs: dict[tuple[str, int], str] = {}
        self.block_rungs: dict[int, str] = {}
        self.used: set[int] = set()

    def pick_block(self, rung: str) -> _Block:
        """A user block that is neither the first nor the last, nor next to another forged block."""
        blocks = [b for b in self.blocks if not b.ddl]
        seqs = {b.sequence_no for b in blocks}
        candidates = [
            b
            for b in blocks[1:-1]
            if not ({b.sequence_no - 1, b.sequence_no, b.sequence_no + 1} & self.used)
            and (rung not in _DATA_RUNGS or any("data" in r["revision"] for r in b.revisions))
            and (
                rung != "V5"
                or any(" WHERE " in s["statement"] for s in b.payload["transactionInfo"]["statements"])
            )
            and (rung != "blockAddress" or any(s < b.sequence_no - 1 and s not in self.used for s in seqs))
        ]
        if not candidates:
            raise ValueError(f"no block left for rung {rung}: build a longer ledger")
        block = self.rng.choice(candidates)
        self.used.add(block.sequence_no)
        return block

    def apply(self, rung: str) -> None:
        if rung not in RUNGS:
            raise ValueError(f"unknown rung {rung!r}; one of {RUNGS}")
        block = self.pick_block(rung)
        if rung in _DATA_RUNGS:
            self._data_rung(rung, block)
        elif rung == "V5":
            self._statement_rung(block)
        else:
            self._revision_rung(rung, block)

    def _data_rung(self, rung: str, block: _Block) -> None:
        steps = _DATA_RUNGS[: _DATA_RUNGS.index(rung) + 1]
        record = self.rng.choice([r for r in block.revisions if "data" in r["revision"]])
        revision = record["revision"]
        meta = revision["metadata"]
        old = revision["hash"]
        _tamper(revision["data"])
        new = old
        old_root = new_root = b""
        p = block.payload
        if "V3" in steps:
            new = revision["hash"] = _revision_hash(revision)
        if "V4" in steps:
            summaries = p["revisionSummaries"]
            old_root = merkle_root([s["hash"] for s in summaries])
            next(s for s in summaries if s["hash"] == old)["hash"] = new
            new_root = merkle_root([s["hash"] for s in summaries])
        if "V7" in steps:
            entries = p["entriesHashList"]
            entries[entries.index(old_root)] = new_root
        if "V8" in steps:
            p["entriesHash"] = merkle_root(p["entriesHashList"])
        if "V9" in steps:
            p["blockHash"] = dot(p["entriesHash"], p["previousBlockHash"])
        self.revision_rungs[(meta["id"], meta["version"])] = rung
        if rung in BLOCK_RUNGS:
            self.block_rungs[block.sequence_no] = rung
        self.forgeries.append(
            Forgery(rung, block.sequence_no, meta["id"], meta["version"], old, new, "data changed")
        )

    def _statement_rung(self, block: _Block) -> None:
        statements = block.payload["transactionInfo"]["statements"]
        k = next(i for i, s in enumerate(statements) if " WHERE " in s["statement"])
        old = statements[k]["statement"]
        statements[k]["statement"] = old.replace(" WHERE ", " WHERE 1 = 1 AND ", 1)
        statements[k]["statementDigest"] = statement_digest(statements[k]["statement"], block.params[k])
        self.block_rungs[block.sequence_no] = "V5"
        self.forgeries.append(Forgery("V5", block.sequence_no, detail=f"statement {k}: {old!r}"))

    def _revision_rung(self, rung: str, block: _Block) -> None:
        record = self.rng.choice(block.revisions)
        revision = record["revision"]
        meta = revision["metadata"]
        if rung == "blockAddress":
            targets = [
                b.sequence_no
                for b in self.blocks
                if not b.ddl and b.sequence_no < block.sequence_no - 1 and b.sequence_no not in self.used
            ]
            target = max(targets)  # the nearest earlier authentic block with revisions
            self.used.add(target)  # (kept authentic by later rungs)
            revision["blockAddress"]["sequenceNo"] = target
            detail = f"blockAddress {block.sequence_no} -> {target}"
        else:
            old = record["tableInfo"]["tableName"]
            new = next(t for t in ("Accounts", "Customers") if t != old)
            record["tableInfo"]["tableName"] = new
            detail = f"tableName {old} -> {new}"
        self.revision_rungs[(meta["id"], meta["version"])] = rung
        h = revision["hash"]
        self.forgeries.append(Forgery(rung, block.sequence_no, meta["id"], meta["version"], h, h, detail))


def forge(ledger: Ledger, rungs: Sequence[str] = (), *, seed: int = 0) -> Journal:
    """The ledger's journal stream with one forgery per entry of ``rungs`` (each on its own block)."""
    forger = _Forger(ledger, seed)
    for rung in rungs:
        forger.apply(rung)
    arn = ledger.stream_arn
    rng = random.Random(seed * 31 + ledger.seed)
    first_time = ledger.blocks[0].payload["blockTimestamp"].timestamp()
    records = [_control(arn, "CREATED", rng, first_time - 1.0)]
    facts: list[RevisionFact] = []
    params: dict[tuple[int, int], list[Any]] = {}
    for authentic, block in zip(ledger.blocks, forger.blocks, strict=True):
        p = block.payload
        seq = block.sequence_no
        t = p["blockTimestamp"].timestamp()
        records.append(
            StreamRecord("BLOCK_SUMMARY", _dump(arn, "BLOCK_SUMMARY", p), p["blockHash"].hex(), seq, time=t)
        )
        for k, ps in enumerate(block.params):
            params[(seq, k)] = ps
        for real, record in zip(authentic.revisions, block.revisions, strict=True):
            revision = record["revision"]
            meta = revision["metadata"]
            key = (meta["id"], meta["version"])
            records.append(
                StreamRecord(
                    "REVISION_DETAILS",
                    _dump(arn, "REVISION_DETAILS", record),
                    revision["hash"].hex(),
                    revision["blockAddress"]["sequenceNo"],
                    meta["id"],
                    meta["version"],
                    time=t,
                )
            )
            facts.append(
                RevisionFact(
                    meta["id"],
                    meta["version"],
                    real["tableInfo"]["tableName"],
                    seq,
                    revision["hash"],
                    real["revision"]["hash"],
                    "data" not in revision,
                    forger.revision_rungs.get(key),
                    forger.block_rungs.get(seq),
                )
            )
    last_time = ledger.blocks[-1].payload["blockTimestamp"].timestamp()
    records.append(_control(arn, "COMPLETED", rng, last_time + 1.0))
    truth = GroundTruth(
        facts, forger.forgeries, [b.sequence_no for b in ledger.blocks], dict(forger.block_rungs), params
    )
    return Journal(arn, ledger.strand_id, records, truth)


def _control(arn: str, kind: str, rng: random.Random, time: float) -> StreamRecord:
    key = bytes(rng.getrandbits(8) for _ in range(32)).hex()
    return StreamRecord(
        "CONTROL", _dump(arn, "CONTROL", {"controlRecordType": kind}), key, control=kind, time=time
    )


# --- Kinesis delivery ---------------------------------------------------------------------------

_SEQUENCE_BASE = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000


@dataclass(frozen=True)
class ShardRecord:
    """One Kinesis record as a shard holds it (a KPL aggregate, or one user record)."""

    shard_id: str
    data: bytes
    sequence_number: str
    partition_key: str
    arrival: float  # ApproximateArrivalTimestamp, seconds since the epoch
    user_records: tuple[StreamRecord, ...]
    ordinal: int  # position of the put in journal order
    duplicate: bool = False  # a PutRecords retry of an earlier put

    def kinesis_record(self, stream_arn: str | None = None, source: str = "forge") -> KinesisRecord:
        return KinesisRecord(
            self.data,
            self.sequence_number,
            self.partition_key,
            self.shard_id,
            self.arrival,
            None,
            stream_arn,
            f"{source} {self.shard_id}",
        )

    def lambda_record(self, stream_arn: str, region: str = "eu-west-1") -> dict[str, Any]:
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": self.partition_key,
                "sequenceNumber": self.sequence_number,
                "data": base64.b64encode(self.data).decode("ascii"),
                "approximateArrivalTimestamp": self.arrival,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"{self.shard_id}:{self.sequence_number}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/qldbstream-forge",
            "awsRegion": region,
            "eventSourceARN": stream_arn,
        }


@dataclass
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    records: list[ShardRecord] = field(default_factory=list)


@dataclass
class Delivery:
    journal: Journal
    stream_arn: str  # the Kinesis stream
    aggregated: bool
    shards: list[Shard]

    def shard(self, shard_id: str) -> Shard:
        return next(s for s in self.shards if s.shard_id == shard_id)

    def kinesis_records(self, shard_id: str) -> list[KinesisRecord]:
        """A shard's records as GetRecords (or the KCL before deaggregation) gives them."""
        return [r.kinesis_record(self.stream_arn) for r in self.shard(shard_id).records]

    def lambda_events(self, batch_size: int = 100) -> Iterator[dict[str, Any]]:
        """Lambda Kinesis events, shard by shard, ``batch_size`` records each."""
        for shard in self.shards:
            for i in range(0, len(shard.records), batch_size):
                yield self.lambda_event(shard.records[i : i + batch_size])

    def lambda_event(self, records: Sequence[ShardRecord]) -> dict[str, Any]:
        return {"Records": [r.lambda_record(self.stream_arn) for r in records]}

    def interleave(self, seed: int = 0) -> list[ShardRecord]:
        """All records in one random interleaving of the shards (each shard's order kept)."""
        rng = random.Random(seed)
        queues = [list(s.records) for s in self.shards if s.records]
        out: list[ShardRecord] = []
        while queues:
            q = rng.choice(queues)
            out.append(q.pop(0))
            if not q:
                queues.remove(q)
        return out

    def by_arrival(self) -> list[ShardRecord]:
        return sorted((r for s in self.shards for r in s.records), key=lambda r: (r.arrival, r.shard_id))


def shard_ranges(shards: int) -> list[tuple[str, int, int]]:
    """``(shardId, StartingHashKey, EndingHashKey)`` of a new stream of ``shards`` shards (even split)."""
    top = 2**128
    return [(f"shardId-{i:012d}", top * i // shards, top * (i + 1) // shards - 1) for i in range(shards)]


def hash_key(partition_key: str) -> int:
    """Kinesis's hash key of a partition key: MD5 of its UTF-8 bytes as a 128-bit integer."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


@dataclass
class _Put:
    data: bytes
    partition_key: str
    user_records: tuple[StreamRecord, ...]
    ordinal: int
    time: float
    control: str | None = None


def _puts(journal: Journal, aggregated: bool) -> list[_Put]:
    units: list[tuple[StreamRecord, ...]] = []
    if aggregated:
        group: list[StreamRecord] = []
        for r in journal.records:
            if r.kind != "REVISION_DETAILS" and group:
                units.append(tuple(group))
                group = []
            group.append(r)
        units.append(tuple(group))
    else:
        units = [(r,) for r in journal.records]
    puts = []
    for i, unit in enumerate(units):
        if aggregated:
            agg = AggRecord()
            for r in unit:
                if not agg.add_user_record(r.partition_key, r.data):
                    raise ValueError("a block does not fit in one aggregate")
            pk, _, data = agg.get_contents()
        else:
            pk, data = unit[0].partition_key, unit[0].data
        puts.append(_Put(data, pk, unit, i, unit[0].time, unit[0].control))
    return puts


def deliver(
    journal: Journal,
    shards: int = 1,
    *,
    aggregated: bool = True,
    duplicates: float = 0.0,
    reorder: int = 0,
    seed: int = 0,
    retry_distance: int = 6,
) -> Delivery:
    """Put the journal into a Kinesis stream of ``shards`` shards.

    * ``aggregated``: one KPL aggregate per block (the summary, then its revisions; the outer
      partition key is the first user record's); otherwise one Kinesis record per user record.
    * ``duplicates``: the fraction of puts delivered once more, 1..``retry_distance`` records
      later in the same shard with a new sequence number (a PutRecords retry).
    * ``reorder``: within a shard, a put may overtake puts that are at most ``reorder`` journal
      positions before it (0: each shard keeps journal order). CONTROL CREATED stays first in
      its shard and COMPLETED last, with the earliest and latest arrival times of the stream.
    """
    rng = random.Random(seed * 104_729 + 3)
    ranges = shard_ranges(shards)
    per_shard: list[list[_Put]] = [[] for _ in ranges]
    for put in _puts(journal, aggregated):
        h = hash_key(put.partition_key)
        index = next(i for i, (_, lo, hi) in enumerate(ranges) if lo <= h <= hi)
        per_shard[index].append(put)
    result: list[Shard] = []
    completed: tuple[int, _Put] | None = None
    for index, ((shard_id, lo, hi), puts) in enumerate(zip(ranges, per_shard, strict=True)):
        body = [p for p in puts if p.control is None]
        created = [p for p in puts if p.control == "CREATED"]
        if any(p.control == "COMPLETED" for p in puts):
            completed = (index, next(p for p in puts if p.control == "COMPLETED"))
        keyed = sorted(body, key=lambda p: p.ordinal + rng.uniform(0, reorder + 1))
        # (put, is a duplicate, earliest arrival), sorted by position: a retry lands 1..retry_distance later
        slots: list[tuple[float, _Put, bool, float]] = []
        for k, p in enumerate(created + keyed):
            t = p.time + rng.uniform(0.02, 0.4)
            slots.append((k, p, False, t))
            if p.control is None and rng.random() < duplicates:
                slots.append((k + 0.5 + rng.randrange(retry_distance), p, True, t + rng.uniform(0.5, 3.0)))
        slots.sort(key=lambda s: s[0])
        order = [(p, dup, t) for _, p, dup, t in slots]
        shard = Shard(shard_id, lo, hi)
        _stamp(shard, order, index, rng)
        result.append(shard)
    assert completed is not None
    index, put = completed
    latest = max((r.arrival for s in result for r in s.records), default=put.time)
    _stamp(result[index], [(put, False, max(latest + 0.5, put.time))], index, rng)
    kinesis_arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/forge-bank-journal"
    return Delivery(journal, kinesis_arn, aggregated, result)


def _stamp(shard: Shard, order: list[tuple[_Put, bool, float]], index: int, rng: random.Random) -> None:
    """Append to ``shard`` with increasing sequence numbers and non-decreasing arrival times."""
    n = len(shard.records)
    last = shard.records[-1].arrival if shard.records else 0.0
    for k, (p, dup, t) in enumerate(order, start=n):
        last = max(last, round(t, 3))
        seq = _SEQUENCE_BASE + index * 10**30 + k * 10**12 + rng.randrange(10**12)
        shard.records.append(
            ShardRecord(
                shard.shard_id, p.data, str(seq), p.partition_key, last, p.user_records, p.ordinal, dup
            )
        )


def forge_stream(
    seed: int = 0,
    *,
    transactions: int = 32,
    rungs: Sequence[str] = (),
    shards: int = 1,
    aggregated: bool = True,
    duplicates: float = 0.0,
    reorder: int = 0,
    ddl: bool = True,
) -> Delivery:
    """:func:`build_ledger`, :func:`forge` and :func:`deliver` in one call (``delivery.journal.truth``)."""
    journal = forge(build_ledger(seed, transactions=transactions, ddl=ddl), rungs, seed=seed)
    return deliver(journal, shards, aggregated=aggregated, duplicates=duplicates, reorder=reorder, seed=seed)


# --- the oracle ---------------------------------------------------------------------------------

_TOP = {"qldbStreamArn", "recordType", "payload"}
_BLOCK_FIELDS = {
    "blockAddress",
    "transactionId",
    "blockTimestamp",
    "blockHash",
    "entriesHash",
    "previousBlockHash",
    "entriesHashList",
    "transactionInfo",
    "revisionSummaries",
}


def check_record(data: bytes, partition_key: str | None = None) -> list[str]:
    """Independently check one journal record (amazon-ion decode, ionhash): the problems found.

    Revisions: V2 / V2b (deleted: ``H(metadata)``). Blocks: V4, V5, V6 (statements without ``?``),
    V7, V8. With ``partition_key``: it is the lowercase hex of ``blockHash`` / ``revision.hash``.
    """
    problems: list[str] = []
    if data[:4] != b"\xe0\x01\x00\xea":
        problems.append("not an Ion 1.0 binary stream")
    value = simpleion.loads(data)
    if set(value) != _TOP:
        problems.append(f"top-level fields {sorted(value)}")
    kind = value["recordType"]
    p = value["payload"]
    key: bytes | None = None
    if kind == "REVISION_DETAILS":
        revision = p["revision"]
        key = revision["hash"]
        if set(p) != {"tableInfo", "revision"} or set(revision) - {
            "blockAddress",
            "hash",
            "data",
            "metadata",
        }:
            problems.append("REVISION_DETAILS shape")
        if _revision_hash(revision) != revision["hash"]:
            problems.append("V2b" if "data" not in revision else "V2")
    elif kind == "BLOCK_SUMMARY":
        key = p["blockHash"]
        if set(p) != _BLOCK_FIELDS:
            problems.append(f"BLOCK_SUMMARY fields {sorted(p)}")
        entries = list(p["entriesHashList"])
        if merkle_root([s["hash"] for s in p["revisionSummaries"]]) not in entries:
            problems.append("V4")
        if ion_hash(p["transactionInfo"]) not in entries:
            problems.append("V5")
        for s in p["transactionInfo"]["statements"]:
            if "?" not in s["statement"] and statement_digest(s["statement"]) != s["statementDigest"]:
                problems.append("V6")
        if merkle_root(entries) != p["entriesHash"]:
            problems.append("V7")
        if dot(p["entriesHash"], p["previousBlockHash"]) != p["blockHash"]:
            problems.append("V8")
    elif kind == "CONTROL":
        if p["controlRecordType"] not in ("CREATED", "COMPLETED"):
            problems.append("controlRecordType")
    else:
        problems.append(f"recordType {kind!r}")
    if partition_key is not None and key is not None and partition_key != key.hex():
        problems.append("partition key")
    return problems


def check_stream(records: Iterable[StreamRecord]) -> list[str]:
    """:func:`check_record` on every record in journal order, plus the cross-record rules: V3 (each
    documented summary entry has its REVISION_DETAILS with the same hash, documentId, blockAddress
    and txId, and nothing else claims the block), V9 (consecutive blocks link), CONTROL first/last,
    ``transactionInfo.documents`` naming each revision's table."""
    problems: list[str] = []
    blocks: dict[int, Any] = {}
    revisions: dict[int, list[Any]] = {}
    records = list(records)
    for i, r in enumerate(records):
        for problem in check_record(r.data, r.partition_key):
            problems.append(f"record {i}: {problem}")
        p = simpleion.loads(r.data)["payload"]
        if r.kind == "BLOCK_SUMMARY":
            blocks[p["blockAddress"]["sequenceNo"]] = p
        elif r.kind == "REVISION_DETAILS":
            revisions.setdefault(p["revision"]["blockAddress"]["sequenceNo"], []).append(p)
    if not records or records[0].control != "CREATED" or records[-1].control != "COMPLETED":
        problems.append("CONTROL CREATED first and COMPLETED last")
    for seq, block in blocks.items():
        listed = {(s["hash"], s["documentId"]) for s in block["revisionSummaries"] if "documentId" in s}
        found = set()
        for rp in revisions.get(seq, []):
            rev = rp["revision"]
            doc = rev["metadata"]["id"]
            found.add((rev["hash"], doc))
            if (
                rev["metadata"]["txId"] != block["transactionId"]
                or rev["blockAddress"]["strandId"] != (block["blockAddress"]["strandId"])
            ):
                problems.append(f"block {seq}: V3 txId/strand of {doc}")
            entry = block["transactionInfo"]["documents"].get(doc)
            if entry is None or (entry["tableName"], entry["tableId"]) != (
                rp["tableInfo"]["tableName"],
                rp["tableInfo"]["tableId"],
            ):
                problems.append(f"block {seq}: tableInfo of {doc}")
        if found != listed:
            problems.append(f"block {seq}: V3 revisions {len(found)} vs summaries {len(listed)}")
        prev = blocks.get(seq - 1)
        if prev is not None and prev["blockHash"] != block["previousBlockHash"]:
            problems.append(f"block {seq}: V9")
    for seq in revisions:
        if seq not in blocks:
            problems.append(f"revisions claim block {seq}, which is not in the stream")
    return problems
