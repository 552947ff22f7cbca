"""Replaying archives through the handlers (``qldbstream run --source``): saved Kinesis records and
journal exports written by the simulator, replayed through the app's pipeline with checkpoints.

The expectation is the simulator's ledger (every committed revision, independently of the stream):
a finished replay delivers each once; an interrupted one, resumed from its checkpoints with the same
de-duplication store, delivers each exactly once over both runs and nothing is missing."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from qldbstream_tools.simulate import Simulation
from qldbstream_tools.simulate.export import write_export

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.cli.command import main
from qldbstream.cli.run import end_report
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.errors import InputError
from qldbstream.io.archive_sources import ExportArchive, KinesisArchive, open_source
from qldbstream.io.checkpoint_file import FileCheckpointStore
from qldbstream.pipeline.checkpoint import Checkpoint, CheckpointStore, InMemoryCheckpointStore
from qldbstream.pipeline.stores import InMemoryDedupeStore
from qldbstream.runtimes.archive import ArchiveReplay
from tests.support.fakes import MemoryDLQ
from tests.support.streams import simulation

Key = tuple[str, int]


class Sink(Router):
    """Counts each revision's effects; fails on chosen revisions (a sink that is down)."""

    def __init__(self, fail_on: dict[Key, int] | None = None) -> None:
        super().__init__("sink")
        self.effects: Counter[Key] = Counter()
        self.fail_on = dict(fail_on or {})
        self.add_revision_handler(self.on_revision)

    def on_revision(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        key = (revision.document_id, revision.version)
        if self.fail_on.get(key, 0) > 0:
            self.fail_on[key] -= 1
            raise ConnectionError(f"sink down for {key}")
        self.effects[key] += 1


def expected(sim: Simulation) -> set[Key]:
    """Every revision the ledger committed: the independent expectation."""
    return {(r.document_id, r.version) for r in sim.ledger.revisions}


def write_events(sim: Simulation, path: Path, batch_size: int = 25) -> Path:
    with path.open("w") as out:
        sim.write_jsonl(out, batch_size=batch_size)
    return path


def replay(
    source: Any,
    sink: Sink,
    store: CheckpointStore,
    *,
    dedupe: InMemoryDedupeStore | None = None,
    dlq: MemoryDLQ | None = None,
) -> ArchiveReplay:
    settings = Settings(retry_max_attempts=2, retry_base_delay_ms=1, breaker_failures=50)
    app = App(
        settings,
        handlers=[sink],
        dlq=dlq if dlq is not None else MemoryDLQ(),
        store=dedupe if dedupe is not None else InMemoryDedupeStore(),  # an empty store is falsy
    )
    pipeline = app.pipeline(journal_order=source.journal_order, sleep=lambda s: None)
    return ArchiveReplay(source, pipeline, store, f"test/{source.location}", [sink], sleep=lambda s: None)


# -- saved Kinesis records ------------------------------------------------------------------------


@pytest.mark.parametrize("aggregate", [True, False])
def test_saved_lambda_events_over_three_shards_deliver_every_revision_once(
    tmp_path: Path, aggregate: bool
) -> None:
    sim = simulation(60, shards=3, aggregate=aggregate)
    source = KinesisArchive([write_events(sim, tmp_path / "events.jsonl")])
    store, sink = InMemoryCheckpointStore(), Sink()

    runner = replay(source, sink, store)
    report = runner.run()

    assert report.reason == "finished"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    assert report.records == len(sim.deliveries)
    assert sorted(report.shards) == sorted({d.shard_id for d in sim.deliveries})
    assert all(s.finished and s.end_reason == "archive-end" for s in report.shards.values())
    for shard_id, records in source.shards.items():  # checkpointed at each shard's last record, ended
        cp = store.get(f"test/{source.location}", shard_id)
        assert cp is not None and cp.shard_ended and cp.sequence_number == records[-1].sequence_number
    assert runner.counts.delivered == len(expected(sim)) and runner.counts.dead_lettered == 0


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("aggregate", [True, False])
def test_an_interrupted_replay_resumes_and_delivers_nothing_twice_nor_misses_anything(
    tmp_path: Path, aggregate: bool, where: float
) -> None:
    sim = simulation(80, shards=2, aggregate=aggregate)
    events = write_events(sim, tmp_path / "events.jsonl")
    want = expected(sim)
    # the sink is down for one revision of the ledger: retries run out, the shard halts there (its
    # block summary may be on the other shard, checkpointed already: it is read again on resume)
    victim = [(r.document_id, r.version) for r in sim.ledger.revisions][int(len(want) * where)]
    dedupe, checkpoints = InMemoryDedupeStore(), tmp_path / "checkpoints.json"
    first = Sink(fail_on={victim: 100})

    halted = replay(KinesisArchive([events]), first, FileCheckpointStore(checkpoints), dedupe=dedupe).run()

    assert halted.reason == "halted"
    reasons = [s.halt_reason for s in halted.shards.values() if s.halt_reason]
    assert len(reasons) == 1 and "sink down" in reasons[0]
    assert victim not in first.effects and 0 < len(first.effects) < len(want)
    # a new process: the checkpoints from the file, the same (shared) de-duplication store
    second = Sink()
    runner = replay(KinesisArchive([events]), second, FileCheckpointStore(checkpoints), dedupe=dedupe)
    resumed = runner.run()

    assert resumed.reason == "finished"
    total = first.effects + second.effects
    assert set(total) == want and set(total.values()) == {1}
    assert victim in second.effects
    assert resumed.records < len(sim.deliveries)  # what the checkpoints covered was not read again


def test_a_stopped_replay_resumes_where_it_stopped(tmp_path: Path) -> None:
    sim = simulation(60, shards=2)
    events = write_events(sim, tmp_path / "events.jsonl")
    store, dedupe = InMemoryCheckpointStore(), InMemoryDedupeStore()
    first = Sink()
    runner = replay(KinesisArchive([events]), first, store, dedupe=dedupe)
    runner.on_progress = lambda status: runner.stop() if len(first.effects) >= 20 else None

    assert runner.run().reason == "stopped"
    saved = store.all(f"test/{KinesisArchive([events]).location}")
    assert saved and not any(cp.shard_ended for cp in saved.values())
    second = Sink()
    assert replay(KinesisArchive([events]), second, store, dedupe=dedupe).run().reason == "finished"

    total = first.effects + second.effects
    assert set(total) == expected(sim) and set(total.values()) == {1}
    # a finished replay run again reads nothing: every pseudo-shard is marked ended
    third = Sink()
    again = replay(KinesisArchive([events]), third, store, dedupe=dedupe).run()
    assert again.reason == "finished" and again.records == 0 and not third.effects


def test_a_tampered_revision_is_dead_lettered_not_delivered(tmp_path: Path) -> None:
    sim = simulation(40, shards=2, tampers=("Transactions#2:data.amount",))
    bad = {(f.document_id, f.version) for f in sim.expected.failures if f.document_id is not None}
    dlq, sink = MemoryDLQ(), Sink()

    report = replay(
        KinesisArchive([write_events(sim, tmp_path / "e.jsonl")]), sink, InMemoryCheckpointStore(), dlq=dlq
    ).run()

    assert report.reason == "finished"
    assert bad and not bad & set(sink.effects)
    assert set(sink.effects) == expected(sim) - bad
    assert {(letter.document_id, letter.version) for letter in dlq.letters} >= bad


def test_records_without_sequence_numbers_keep_their_file_order(tmp_path: Path) -> None:
    """base64 lines (no shard, no sequence number): one pseudo-shard per file, numbered 1, 2, ..."""
    sim = simulation(30, aggregate=False)
    path = tmp_path / "records.b64"
    path.write_text("".join(base64.b64encode(r.data).decode() + "\n" for r in sim.records))
    source = KinesisArchive([tmp_path])
    assert list(source.shards) == [str(path)]
    assert [r.sequence_number for r in source.shards[str(path)]] == [
        str(n) for n in range(1, len(sim.records) + 1)
    ]
    store, sink = InMemoryCheckpointStore(), Sink()

    assert replay(source, sink, store).run().reason == "finished"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    assert store.get(f"test/{source.location}", str(path)) == Checkpoint(
        str(path), str(len(sim.records)), 0, shard_ended=True
    )


def test_an_unreadable_record_refuses_the_archive_before_anything_is_delivered(tmp_path: Path) -> None:
    sim = simulation(10)
    event = next(iter(sim.lambda_events()))
    event["Records"][1]["kinesis"]["data"] = "not base64!"
    (tmp_path / "event.json").write_text(json.dumps(event))
    with pytest.raises(InputError, match="cannot be read"):
        KinesisArchive([tmp_path])
    with pytest.raises(InputError, match="expected records:PATH"):
        open_source("kinesis:somewhere")


# -- journal exports ------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["ION_TEXT", "ION_BINARY"])
def test_a_journal_export_replays_every_revision_once(tmp_path: Path, output_format: str) -> None:
    sim = simulation(60)
    write_export(sim, tmp_path, output_format=output_format, blocks_per_object=7)
    source = ExportArchive(str(tmp_path))
    store, sink = InMemoryCheckpointStore(), Sink()

    report = replay(source, sink, store).run()

    assert report.reason == "finished"
    assert set(sink.effects) == expected(sim) and set(sink.effects.values()) == {1}
    (strand,) = report.shards
    assert strand == sim.journal.strand_id
    last = sim.journal.blocks[-1]
    cp = store.get(f"test/{source.location}", strand)
    assert cp is not None and cp.shard_ended and cp.sequence_number == str(last.sequence_no)


@pytest.mark.parametrize("where", [0.2, 0.8])
def test_an_interrupted_export_replay_resumes_after_its_checkpoint(tmp_path: Path, where: float) -> None:
    sim = simulation(80)
    write_export(sim, tmp_path / "export", blocks_per_object=5)
    want = expected(sim)
    victim = [(r.document_id, r.version) for r in sim.ledger.revisions][int(len(want) * where)]
    dedupe, checkpoints = InMemoryDedupeStore(), tmp_path / "cp.json"
    first = Sink(fail_on={victim: 100})

    source = ExportArchive(str(tmp_path / "export"))
    assert replay(source, first, FileCheckpointStore(checkpoints), dedupe=dedupe).run().reason == "halted"
    saved = FileCheckpointStore(checkpoints).all(f"test/{source.location}")
    (cp,) = saved.values()
    assert cp.sequence_number is not None and not cp.shard_ended
    second = Sink()
    resumed = replay(
        ExportArchive(str(tmp_path / "export")), second, FileCheckpointStore(checkpoints), dedupe=dedupe
    ).run()

    assert resumed.reason == "finished"
    total = first.effects + second.effects
    assert set(total) == want and set(total.values()) == {1}
    # the reader started at the checkpointed block: the blocks before it were not read again
    assert 0 < resumed.records < sum(len(b.revisions) + 1 for b in sim.journal.blocks)


def test_a_tampered_revision_in_an_export_is_dead_lettered_and_its_block_still_delivers(
    tmp_path: Path,
) -> None:
    sim = simulation(40, tampers=("Transactions#2:data.amount",))
    write_export(sim, tmp_path)
    bad = {(f.document_id, f.version) for f in sim.expected.failures if f.document_id is not None}
    dlq, sink = MemoryDLQ(), Sink()

    report = replay(ExportArchive(str(tmp_path)), sink, InMemoryCheckpointStore(), dlq=dlq).run()

    assert report.reason == "finished"
    assert bad and set(sink.effects) == expected(sim) - bad
    assert {(letter.document_id, letter.version) for letter in dlq.letters} == bad


# -- the file checkpoint store --------------------------------------------------------------------


def test_the_file_checkpoint_store_never_moves_back_keeps_ends_and_refuses_other_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cp.json"
    store = FileCheckpointStore(path)
    store.save("k", Checkpoint("s", "20", 3))
    store.save("k", Checkpoint("s", "9", 0))  # behind: ignored
    store.save("k", Checkpoint("t", None, 0, shard_ended=True))
    store.save("k", Checkpoint("t", "5", 0))  # after the end: ignored
    reread = FileCheckpointStore(path)
    assert reread.get("k", "s") == Checkpoint("s", "20", 3)
    assert reread.get("k", "t") == Checkpoint("t", None, 0, shard_ended=True)
    assert reread.all("other") == {}
    path.write_text('{"some": "other file"}')
    with pytest.raises(InputError, match="not a qldbstream checkpoint file"):
        FileCheckpointStore(path)


# -- the command ----------------------------------------------------------------------------------


def test_run_source_replays_checkpoints_to_a_file_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLDBSTREAM_HANDLERS", "")
    sim = simulation(30, shards=2)
    events = write_events(sim, tmp_path / "events.jsonl")
    cp = tmp_path / "cp.json"
    argv = ["run", "--source", f"records:{events}", "--checkpoint-file", str(cp), "--no-progress"]

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"finished; {len(sim.deliveries)} records read, 2 of 2 shards finished" in err
    saved = json.loads(cp.read_text())["checkpoints"]
    (key,) = saved
    assert key.endswith(f"records:{events.resolve()}") and all(s["shardEnded"] for s in saved[key].values())
    assert main(argv) == 0
    assert "finished; 0 records read, 2 of 2 shards finished" in capsys.readouterr().err


def test_run_source_refuses_stream_flags_and_unknown_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--source", "records:x", "--from", "2024-01-01T00:00:00Z"]) == 2
    assert "--from apply to a live stream only" in capsys.readouterr().err
    assert main(["run", "--source", "tape:somewhere", "--no-progress"]) == 2
    assert "expected records:PATH" in capsys.readouterr().err
    assert main(["run", "--stream", "s", "--checkpoint-file", "cp.json"]) == 2
    assert "--checkpoint-file is for --source" in capsys.readouterr().err


def test_a_halted_replay_ends_with_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = simulation(30)
    victim = next((r.document_id, r.version) for r in sim.ledger.revisions)
    source = KinesisArchive([write_events(sim, tmp_path / "events.jsonl")])
    runner = replay(source, Sink(fail_on={victim: 100}), InMemoryCheckpointStore())
    report = runner.run()

    assert end_report(report, f"; {runner.counts.describe()}") == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("qldbstream run:")]
    assert line.startswith("qldbstream run: halted: shard shardId-000000000000 cannot move on (")
    assert "sink down" in line and "fix the cause and run again; 0 deliveries" in line
