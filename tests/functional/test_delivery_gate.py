"""The delivery gate in the pipeline, on streams made independently of qldbstream (tests/support/forge.py).

Each test names one rule of qldbstream.core.gate and checks it against the forge's ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.core.decode import JournalRecord, RevisionDetails
from qldbstream.core.gate import Delivery
from qldbstream.core.records import KinesisRecord
from qldbstream.pipeline.batch import BatchResult, Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.forge import Delivery as Stream
from tests.support.forge import forge_stream

LADDER = ("V2", "V3", "V4", "V5", "V7", "V8", "V9", "blockAddress", "tableInfo")


class Recorder(Handler):
    name = "recorder"

    def __init__(self) -> None:
        self.revisions: list[tuple[str, int, bytes, bool]] = []
        self.guarantees: set[str] = set()

    def wants(self, record: JournalRecord) -> bool:
        return isinstance(record, RevisionDetails)

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        self.guarantees.add(ctx.delivery)
        for i, r in enumerate(records):
            assert isinstance(r, RevisionDetails)
            self.revisions.append((r.document_id, r.version, r.hash, ctx.for_record(r, i).late))

    def keys(self) -> list[tuple[str, int]]:
        return [(d, v) for d, v, _, _ in self.revisions]


class DurableMemoryStore(InMemoryGateStore):
    """The in-memory store, claiming durability: what a DynamoDB store does, without a server."""

    @property
    def durable(self) -> bool:
        return True


def pipeline(
    t: FakeTime,
    dlq: MemoryDLQ,
    handler: Handler,
    store: Any = None,
    *,
    journal_order: bool = False,
    **settings: Any,
) -> Pipeline:
    return Pipeline(
        [handler],
        dlq=dlq,
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.01), **settings),
        clock=t.clock,
        sleep=t.sleep,
        gate_store=store,
        wall_clock=t.clock,
        journal_order=journal_order,
    )


def run_shards(p: Pipeline, stream: Stream, order: str = "one-by-one", batch: int = 5) -> list[BatchResult]:
    """Feed every shard in batches: shard after shard (``one-by-one``) or shards in reverse order."""
    shards = [s.shard_id for s in stream.shards if s.records]
    if order == "reverse":
        shards.reverse()
    results = []
    for sid in shards:
        records = stream.kinesis_records(sid)
        for i in range(0, len(records), batch):
            results.append(p.process(sid, records[i : i + batch]))
    return results


@pytest.mark.parametrize("aggregated", [True, False], ids=["aggregated", "not-aggregated"])
@pytest.mark.parametrize("order", ["one-by-one", "reverse"])
def test_the_whole_ladder_verified_mode(aggregated: bool, order: str) -> None:
    stream = forge_stream(5, transactions=40, rungs=LADDER, shards=4, aggregated=aggregated)
    truth = stream.journal.truth
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec)
    run_shards(p, stream, order)
    p.drain()
    withheld = truth.withheld("verified")
    delivered = rec.keys()
    assert not set(delivered) & set(withheld), "a forged or unvouched revision reached the handler"
    assert sorted(delivered) == sorted(f.key for f in truth.deliverable("verified"))
    # every withheld revision is in the DLQ, with the check that stopped it
    dead = {(letter.document_id, letter.version) for letter in dlq.letters if letter.document_id}
    assert set(withheld) <= dead
    # each delivered hash is the one QLDB computed - but for the V9 rung, which only the
    # chain-confirmed mode can withhold (a re-hashed block breaks only the link to its successor)
    facts = {f.key: f for f in truth.revisions}
    chain_only = set(truth.withheld("chain-confirmed")) - set(withheld)
    assert chain_only
    assert all(h == facts[(d, v)].authentic_hash for d, v, h, _ in rec.revisions if (d, v) not in chain_only)


def test_each_rung_is_caught_by_its_check() -> None:
    expected = {
        "V2": {"V2"},
        "V3": {"V3"},
        "V4": {"V4"},
        "V5": {"V5"},
        "V7": {"V7"},
        "V8": {"V8"},
        "blockAddress": {"V3"},
        "tableInfo": {"tableInfo"},
    }
    for rung, checks in expected.items():
        stream = forge_stream(11, transactions=24, rungs=(rung,), shards=1)
        t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
        p = pipeline(t, dlq, rec)
        run_shards(p, stream)
        withheld = stream.journal.truth.withheld("verified")
        assert withheld and not set(rec.keys()) & set(withheld), rung
        found = {
            c.split("/")[0]
            for letter in dlq.letters
            if letter.document_id
            for f in letter.verification_failures
            for c in [str(f["check"])]
        }
        assert found & checks, (rung, found)


def test_a_revision_before_its_block_summary_waits_and_holds_its_shards_checkpoint() -> None:
    stream = forge_stream(3, transactions=30, shards=4, aggregated=False)
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec)
    results = run_shards(p, stream, "reverse", batch=100)
    assert sum(r.parked for r in results) > 0, "no revision arrived before its block: the test is void"
    assert sum(r.released for r in results) > 0
    assert sorted(rec.keys()) == sorted(f.key for f in stream.journal.truth.deliverable())
    assert not dlq.letters
    # while a shard had a record parked in memory its checkpoint stayed before it; once the record
    # was delivered from another shard's batch, that shard's checkpoint moved (other_checkpoints)
    assert any(r.other_checkpoints for r in results)
    assert not any(p.waiting(s.shard_id) for s in stream.shards)


def test_in_memory_parking_never_checkpoints_past_a_parked_record() -> None:
    stream = forge_stream(3, transactions=30, shards=4, aggregated=False)
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec)
    saved: dict[str | None, tuple[str, int]] = {}
    first_shard = [s for s in stream.shards if s.records][-1]
    records = stream.kinesis_records(first_shard.shard_id)
    result = p.process(first_shard.shard_id, records)
    assert result.parked, "nothing parked: the test is void"
    if result.checkpoint is not None:
        saved[first_shard.shard_id] = result.checkpoint
    parked_first = result.first_parked
    assert parked_first is not None
    cp = saved.get(first_shard.shard_id)
    assert cp is None or int(cp[0]) < int(parked_first.sequence_number)


def test_a_durable_store_lets_the_checkpoint_pass_parked_records() -> None:
    stream = forge_stream(3, transactions=30, shards=4, aggregated=False)
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec, DurableMemoryStore())
    last = [s for s in stream.shards if s.records][-1]
    records = stream.kinesis_records(last.shard_id)
    result = p.process(last.shard_id, records)
    assert result.parked
    assert result.first_unfinished is None
    assert result.checkpoint == (records[-1].sequence_number, 0)
    # a different process (a new pipeline on the same store) delivers them with their blocks
    p2 = pipeline(t, dlq, rec, p.gate_store)
    run_shards(p2, stream)
    assert sorted(set(rec.keys())) == sorted(f.key for f in stream.journal.truth.deliverable())


def test_a_revision_whose_block_summary_never_comes_is_dead_lettered_after_the_maximum_wait() -> None:
    stream = forge_stream(3, transactions=30, shards=1, aggregated=False)
    records = stream.kinesis_records(stream.shards[0].shard_id)
    # drop one block summary from the stream
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import BlockSummary, decode

    def is_block(kr: KinesisRecord) -> bool:
        return isinstance(decode(deaggregate(kr)[0]), BlockSummary)

    blocks = [i for i, kr in enumerate(records) if is_block(kr)]
    victim = blocks[len(blocks) // 2]
    orphans = []
    for kr in records[victim + 1 :]:
        r = decode(deaggregate(kr)[0])
        if isinstance(r, BlockSummary):
            break
        orphans.append(r)
    assert orphans
    kept = records[:victim] + records[victim + 1 :]
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec, max_wait=60.0)
    p.process("s", kept)
    orphan_keys = {(r.document_id, r.version) for r in orphans if isinstance(r, RevisionDetails)}
    assert not orphan_keys & set(rec.keys())
    assert p.waiting("s")
    t.now += 61
    p.process("s", [])
    assert not p.waiting("s")
    dead = {(letter.document_id, letter.version): letter for letter in dlq.letters}
    assert orphan_keys <= set(dead)
    assert all("unverifiable" in dead[k].error_message for k in orphan_keys)
    assert not orphan_keys & set(rec.keys())


def test_chain_confirmed_withholds_the_v9_block_and_dead_letters_the_unconfirmed_tail() -> None:
    stream = forge_stream(7, transactions=30, rungs=("V9", "V8"), shards=4, aggregated=False)
    truth = stream.journal.truth
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec, delivery=Delivery.CHAIN_CONFIRMED)
    run_shards(p, stream, "reverse")
    p.drain()
    withheld = truth.withheld("chain-confirmed")
    assert any(r == "V9" for r in withheld.values())
    delivered = set(rec.keys())
    assert not delivered & set(withheld)
    tail = {f.key for f in truth.awaiting("chain-confirmed")}
    assert tail and not delivered & tail
    doubtful = {f.key for f in truth.doubtful("chain-confirmed")}
    assert {f.key for f in truth.deliverable("chain-confirmed")} - doubtful <= delivered
    dead = {(letter.document_id, letter.version) for letter in dlq.letters}
    assert tail <= dead
    assert rec.guarantees == {"chain-confirmed"}


def test_verified_mode_delivers_the_v9_rung_and_reports_the_link() -> None:
    stream = forge_stream(7, transactions=30, rungs=("V9",), shards=1)
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec)
    results = run_shards(p, stream)
    assert any(f.check == "V9" for r in results for f in r.verification_failures)
    assert sorted(rec.keys()) == sorted(f.key for f in stream.journal.truth.deliverable("verified"))


def test_observe_only_mode_skips_the_gate() -> None:
    from qldbstream.pipeline.batch import VerificationAction

    stream = forge_stream(7, transactions=24, rungs=("V8",), shards=1)
    t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
    p = pipeline(t, dlq, rec, verification_action=VerificationAction.DELIVER)
    run_shards(p, stream)
    assert len(set(rec.keys())) == len(stream.journal.truth.revisions)
    assert rec.guarantees == {"observe-only"}


class OrderRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[int] = []

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        super().handle_batch(records, ctx)
        self.blocks += [r.block_address.sequence_no for r in records if isinstance(r, RevisionDetails)]


def journal_pipeline(t: FakeTime, dlq: MemoryDLQ, handler: Handler, **settings: Any) -> Pipeline:
    return pipeline(t, dlq, handler, journal_order=True, **settings)


def read_like_the_worker(p: Pipeline, stream: Stream, batch: int = 7, seed: int = 0) -> None:
    """Round-robin over the shards in batches, the watermark as the worker computes it."""
    import random

    rng = random.Random(seed)
    cursors = {s.shard_id: 0 for s in stream.shards if s.records}
    last: dict[str, float | None] = dict.fromkeys(cursors)
    while cursors:
        sid = rng.choice(sorted(cursors))
        records = stream.kinesis_records(sid)
        start = cursors[sid]
        chunk = records[start : start + rng.randint(1, batch)]
        marks = [
            float("inf") if sid2 not in cursors else (float("-inf") if a is None else a)
            for sid2, a in last.items()
        ]
        p.watermark = min(marks)
        p.process(sid, chunk)
        last[sid] = chunk[-1].approximate_arrival_timestamp
        cursors[sid] = start + len(chunk)
        if cursors[sid] >= len(records):
            del cursors[sid]
    p.watermark = float("inf")
    for sid in last:
        p.process(sid, [])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("aggregated", [True, False], ids=["aggregated", "not-aggregated"])
def test_journal_order_merges_the_shards_block_after_block(seed: int, aggregated: bool) -> None:
    stream = forge_stream(seed, transactions=40, shards=4, aggregated=aggregated, duplicates=0.3, reorder=3)
    t, dlq, rec = FakeTime(), MemoryDLQ(), OrderRecorder()
    p = journal_pipeline(t, dlq, rec)
    read_like_the_worker(p, stream, seed=seed)
    truth = stream.journal.truth
    assert sorted(set(rec.keys())) == sorted(f.key for f in truth.deliverable())
    assert rec.blocks == sorted(rec.blocks), "revisions were not delivered in journal order"
    assert not any(late for *_, late in rec.revisions)  # in journal order nothing is late
    assert not p.gaps
    assert not any(p.waiting(s.shard_id) for s in stream.shards)


def test_journal_order_gives_up_a_missing_block_and_reports_the_gap() -> None:
    stream = forge_stream(4, transactions=30, shards=4, aggregated=True)
    # remove one whole aggregate (a block summary and its revisions) from its shard
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import BlockSummary, decode

    victim_seq = None
    for shard in stream.shards:
        for i, r in enumerate(shard.records):
            users = deaggregate(r.kinesis_record())
            first = decode(users[0])
            if isinstance(first, BlockSummary) and len(users) > 1 and first.sequence_no > 20:
                victim_seq = first.sequence_no
                del shard.records[i]
                break
        if victim_seq is not None:
            break
    assert victim_seq is not None
    t, dlq, rec = FakeTime(), MemoryDLQ(), OrderRecorder()
    p = journal_pipeline(t, dlq, rec)
    read_like_the_worker(p, stream)
    assert [(g[1], g[2]) for g in p.gaps] == [(victim_seq, victim_seq)]
    expected = {f.key for f in stream.journal.truth.deliverable() if f.sequence_no != victim_seq}
    assert set(rec.keys()) == expected
    assert rec.blocks == sorted(rec.blocks)


def test_journal_order_gap_timeout_without_a_watermark() -> None:
    stream = forge_stream(4, transactions=20, shards=2, aggregated=True)
    t, dlq, rec = FakeTime(), MemoryDLQ(), OrderRecorder()
    p = journal_pipeline(t, dlq, rec, gap_timeout=30.0)
    sid = stream.shards[0].shard_id
    p.process(sid, stream.kinesis_records(sid))  # the other shard is never read; no watermark
    assert not rec.revisions
    t.now += 31
    p.process(sid, [])
    assert rec.revisions and rec.blocks == sorted(rec.blocks)


def lambda_app(rec: Handler, dlq: MemoryDLQ, dedupe: InMemoryDedupeStore, gate: Any) -> Any:
    from qldbstream.app.assembly import App
    from qldbstream.app.config import Settings
    from qldbstream.runtimes.aws_lambda import make_handler

    return make_handler(App(Settings(), handlers=[rec], dlq=dlq, store=dedupe, gate_store=gate))


def test_lambda_with_an_in_memory_gate_store_retries_a_parked_record() -> None:
    """A parked record lives only in this container: Lambda must deliver it again (batch item failure)."""
    stream = forge_stream(3, transactions=30, shards=4, aggregated=False)
    dlq, rec = MemoryDLQ(), Recorder()
    handler = lambda_app(rec, dlq, InMemoryDedupeStore(), InMemoryGateStore())
    last = [s for s in stream.shards if s.records][-1]
    response = handler(stream.lambda_event(last.records), None)
    failures = response["batchItemFailures"]
    assert failures, "a record waits for its block summary: it must be reported"
    delivered_before = set(rec.keys())
    first = failures[0]["itemIdentifier"]
    index = next(i for i, r in enumerate(last.records) if r.sequence_number == first)
    # the reported record is the first revision of this shard whose block summary it has not read
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import BlockSummary, decode

    decoded = [decode(deaggregate(r.kinesis_record())[0]) for r in last.records]
    blocks_here = {d.sequence_no for d in decoded if isinstance(d, BlockSummary)}
    orphans = [
        i
        for i, d in enumerate(decoded)
        if isinstance(d, RevisionDetails) and d.block_address.sequence_no not in blocks_here
    ]
    assert orphans and index == orphans[0]
    assert not delivered_before & set(stream.journal.truth.withheld())


def test_lambda_shards_in_separate_containers_share_a_durable_gate_store() -> None:
    """Each shard's invocations in their own container; only the gate and de-duplication stores are shared."""
    stream = forge_stream(
        3, transactions=30, shards=4, aggregated=False, duplicates=0.3, rungs=("V8", "tableInfo")
    )
    dlq, rec = MemoryDLQ(), Recorder()
    gate, dedupe = DurableMemoryStore(), InMemoryDedupeStore()
    handlers = {s.shard_id: lambda_app(rec, dlq, dedupe, gate) for s in stream.shards}
    for shard in reversed(stream.shards):  # every shard read after the ones its blocks are on
        for i in range(0, len(shard.records), 10):
            response = handlers[shard.shard_id](stream.lambda_event(shard.records[i : i + 10]), None)
            assert response["batchItemFailures"] == []
    truth = stream.journal.truth
    assert sorted(set(rec.keys())) == sorted(f.key for f in truth.deliverable())
    assert not set(rec.keys()) & set(truth.withheld())
    assert gate.parked_count() == 0


def test_lambda_warns_at_start_up_when_its_stores_are_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="qldbstream.app"):
        lambda_app(Recorder(), MemoryDLQ(), InMemoryDedupeStore(), InMemoryGateStore())
    assert any("gate_store = memory" in r.getMessage() for r in caplog.records)
    assert any("dedupe_store = memory" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="qldbstream.app"):
        lambda_app(Recorder(), MemoryDLQ(), SharedMemoryDedupeStore(), DurableMemoryStore())
    assert not any("_store" in r.getMessage() for r in caplog.records)


# --- chain-confirmed: a digest's proof confirms the last block -------------------------------------


def _last_block(stream: Stream) -> tuple[str, int, bytes, bytes]:
    """The last block summary as the forge wrote it: strand, sequence number, blockHash and the Ion
    text of the block (what a saved GetBlock output holds)."""
    from amazon.ion import simpleion

    summaries = [r for r in stream.journal.records if r.kind == "BLOCK_SUMMARY"]
    payload = simpleion.loads(summaries[-1].data)["payload"]
    address = payload["blockAddress"]
    return str(address["strandId"]), int(address["sequenceNo"]), bytes(payload["blockHash"]), payload


def _anchor_files(
    tmp_path: Any, block: Any, block_hash: bytes, *, digest_bytes: bytes | None = None
) -> list[str]:
    """A GetBlock output (block, proof) and a GetDigest output whose digest the proof folds to. The
    proof is one made-up sibling hash: what is checked here is the fold and the gate, not QLDB's
    tree shape (the fold itself is checked on QLDB's own proofs in the proof tests)."""
    import base64
    import json

    from amazon.ion import simpleion

    from qldbstream.core.qldb_hash import fold_proof

    sibling = bytes(range(32))
    digest = digest_bytes or fold_proof(block_hash, [sibling])
    strand, seq = str(block["blockAddress"]["strandId"]), int(block["blockAddress"]["sequenceNo"])
    get_block = {
        "Block": {"IonText": simpleion.dumps(dict(block), binary=False)},
        "Proof": {"IonText": simpleion.dumps([sibling], binary=False)},
    }
    get_digest = {
        "Digest": base64.b64encode(digest).decode(),
        "DigestTipAddress": {"IonText": f'{{strandId: "{strand}", sequenceNo: {seq}}}'},
    }
    paths = []
    for name, doc in (("get-block.json", get_block), ("get-digest.json", get_digest)):
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    return paths


def test_a_digest_proof_confirms_the_last_block_under_chain_confirmed(tmp_path: Any) -> None:
    from qldbstream.io.anchors import load_anchors

    stream = forge_stream(11, transactions=20, rungs=(), shards=4, aggregated=False)
    truth = stream.journal.truth
    strand, seq, block_hash, block = _last_block(stream)
    tail = {f.key for f in truth.awaiting("chain-confirmed")}
    assert tail

    def run(anchors: dict[tuple[str, int], bytes]) -> tuple[Recorder, MemoryDLQ]:
        t, dlq, rec = FakeTime(), MemoryDLQ(), Recorder()
        p = Pipeline(
            [rec],
            dlq=dlq,
            store=InMemoryDedupeStore(clock=t.clock),
            settings=PipelineSettings(
                retry=RetryPolicy(max_attempts=2, base_delay=0.01), delivery=Delivery.CHAIN_CONFIRMED
            ),
            clock=t.clock,
            sleep=t.sleep,
            wall_clock=t.clock,
            anchors=anchors,
        )
        run_shards(p, stream, "reverse")
        p.drain()
        return rec, dlq

    anchors = load_anchors(_anchor_files(tmp_path, block, block_hash))
    assert anchors == {(strand, seq): block_hash}
    rec, dlq = run(anchors)
    delivered = set(rec.keys())
    assert tail <= delivered  # no successor, but the digest confirms the block
    assert {f.key for f in truth.deliverable("chain-confirmed")} | tail <= delivered
    assert not {(letter.document_id, letter.version) for letter in dlq.letters} & tail

    # without the anchor the same tail is dead-lettered as unconfirmed (the documented rule)
    rec, dlq = run({})
    assert not set(rec.keys()) & tail
    assert tail <= {(letter.document_id, letter.version) for letter in dlq.letters}

    # an anchor for another block hash at that place: the stream's block is not the one the digest
    # covers, so its revisions are withheld (V9)
    rec, dlq = run({(strand, seq): bytes(32)})
    assert not set(rec.keys()) & tail
    assert {"V9"} == {
        f["check"]
        for letter in dlq.letters
        if (letter.document_id, letter.version) in tail
        for f in letter.verification_failures
    }


def test_anchors_that_do_not_verify_stop_the_app_at_start_up(tmp_path: Any) -> None:
    from qldbstream.app.assembly import App
    from qldbstream.app.config import load_settings
    from qldbstream.core.errors import ConfigurationError
    from qldbstream.io.anchors import load_anchors

    stream = forge_stream(11, transactions=5, rungs=(), shards=1, aggregated=False)
    _, _, block_hash, block = _last_block(stream)
    paths = _anchor_files(tmp_path, block, block_hash, digest_bytes=bytes(32))  # the fold gives another
    with pytest.raises(ConfigurationError, match="V10 failed"):
        load_anchors(paths)
    settings = load_settings(
        {"QLDBSTREAM_DLQ": f"dir:{tmp_path / 'dlq'}", "QLDBSTREAM_CHAIN_ANCHORS": ",".join(paths)}
    )
    assert settings.chain_anchors == tuple(paths)
    with pytest.raises(ConfigurationError, match="V10 failed"):
        App(settings, handlers=[])
    with pytest.raises(ConfigurationError, match="no digest"):
        load_anchors(paths[:1])
    (tmp_path / "x.json").write_text('{"Revision": 1}')
    with pytest.raises(ConfigurationError, match="neither a GetBlock"):
        load_anchors([str(tmp_path / "x.json")])


# --- claims in a shared de-duplication store: several processes, one document ---------------------


class SharedMemoryDedupeStore(InMemoryDedupeStore):
    """The in-memory store as a shared one (``shared``): the pipeline claims every record in it,
    as it does in DynamoDB (the same rules: tests/integration/test_store_contracts.py)."""

    shared = True


class Died(BaseException):
    """A container that dies inside the handler (not an error the pipeline could catch)."""


def _two_blocks_of_one_document(seed: int) -> tuple[str, list[KinesisRecord], list[KinesisRecord]]:
    """A document's versions 0 and 1 in two different blocks, each block as its own shard's batch
    (block summary first): what two Lambda containers read at the same moment."""
    from collections import defaultdict

    stream = forge_stream(seed, transactions=20, rungs=(), shards=1, aggregated=False)
    records = stream.journal.records
    versions: dict[str, dict[int, Any]] = defaultdict(dict)
    for r in records:
        if r.kind == "REVISION_DETAILS":
            versions[r.document_id][r.version] = r
    doc = next(
        d for d, vs in versions.items() if {0, 1} <= set(vs) and vs[0].sequence_no != vs[1].sequence_no
    )

    def batch(seq: int, shard: str) -> list[KinesisRecord]:
        block = [r for r in records if r.kind == "BLOCK_SUMMARY" and r.sequence_no == seq]
        block += [r for r in records if r.kind == "REVISION_DETAILS" and r.sequence_no == seq]
        return [
            KinesisRecord(r.data, str(1000 + i), r.partition_key, shard, None, None, stream.stream_arn)
            for i, r in enumerate(block)
        ]

    return (
        doc,
        batch(versions[doc][0].sequence_no, "shardId-a"),
        batch(versions[doc][1].sequence_no, "shardId-b"),
    )


class ShardSink(Recorder):
    """One container's handler: records what it sees in ``seen``; ``inside`` runs (once per revision
    of ``doc``) while it is inside that delivery; ``die`` kills the container there."""

    def __init__(
        self,
        shard: str,
        doc: str,
        seen: list[tuple[str, str, int, bool]],
        *,
        inside: Any = None,
        die: bool = False,
    ) -> None:
        super().__init__()
        self.shard, self.doc, self.seen, self.inside, self.die = shard, doc, seen, inside, die

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        for i, r in enumerate(records):
            assert isinstance(r, RevisionDetails)
            self.seen.append((self.shard, r.document_id, r.version, ctx.for_record(r, i).late))
            if r.document_id == self.doc:
                if self.die:
                    raise Died
                if self.inside is not None:
                    self.inside()


def container(sink: ShardSink, store: SharedMemoryDedupeStore) -> Pipeline:
    """One Lambda container's pipeline over the shared store."""
    t = FakeTime()
    return Pipeline(
        [sink],
        dlq=MemoryDLQ(),
        store=store,
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.01)),
        clock=t.clock,
        sleep=t.sleep,
        wall_clock=t.clock,
    )


def test_a_document_being_delivered_by_one_shard_makes_another_shard_wait() -> None:
    doc, batch_a, batch_b = _two_blocks_of_one_document(5)
    store = SharedMemoryDedupeStore()
    seen: list[tuple[str, str, int, bool]] = []
    during: list[BatchResult] = []
    b = container(ShardSink("b", doc, seen), store)
    # shard b's container runs while shard a is inside the delivery of doc v0
    inside = lambda: during.append(b.process("shardId-b", batch_b))  # noqa: E731
    a = container(ShardSink("a", doc, seen, inside=inside), store)
    assert a.process("shardId-a", batch_a).first_unfinished is None
    (result,) = during
    assert result.halted and "another shard is delivering an earlier version" in (result.halt_reason or "")
    assert result.first_unfinished is not None  # Lambda reports it; the event source mapping retries
    assert (doc, 1) not in {(d, v) for _, d, v, _ in seen}
    again = b.process("shardId-b", batch_b)  # the retry, after shard a let the document go
    assert again.first_unfinished is None and not again.halted
    mine = [(s, v, late) for s, d, v, late in seen if d == doc]
    assert mine == [("a", 0, False), ("b", 1, False)]


def test_a_container_that_dies_inside_a_delivery_is_replaced_by_its_shard_s_next_one() -> None:
    doc, batch_a, batch_b = _two_blocks_of_one_document(6)
    store = SharedMemoryDedupeStore()
    seen: list[tuple[str, str, int, bool]] = []
    with pytest.raises(Died):
        container(ShardSink("a", doc, seen, die=True), store).process("shardId-a", batch_a)
    b = container(ShardSink("b", doc, seen), store)
    first = b.process("shardId-b", batch_b)  # doc is still locked by shard a's claim
    assert first.halted and first.first_unfinished is not None
    # the event source mapping gives shard a's batch to a new container: it is the same holder, so it
    # claims doc v0 again at once (no waiting for the lock's time), delivers it and lets go
    assert container(ShardSink("a2", doc, seen), store).process("shardId-a", batch_a).first_unfinished is None
    assert b.process("shardId-b", batch_b).first_unfinished is None
    mine = [(s, v, late) for s, d, v, late in seen if d == doc]
    assert mine == [("a", 0, False), ("a2", 0, False), ("b", 1, False)]
