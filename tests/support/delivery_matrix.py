"""The messy-delivery matrix (issue 11, deliverable 7): runners that push a forged, scattered stream
through a qldbstream runtime and judge what a handler received against the forge's ground truth.

Everything is compared with :mod:`tests.support.forge` only (``GroundTruth.deliverable``,
``withheld``, ``awaiting``, ``doubtful``), never with qldbstream's own simulator:

* **expected** - ``truth.deliverable(mode)``; revisions in ``truth.doubtful(mode)`` may be delivered
  or held (the forge says either is correct), every other expected one must arrive;
* **forged** - anything in ``truth.withheld(mode)`` that reached the handler, or a revision whose
  hash differs from the one the stream carries for its key (must be 0);
* **unconfirmed** - under ``chain-confirmed``, a revision of the last block (``truth.awaiting``):
  no successor confirms it, so the end-of-input rule (``Pipeline.drain()`` dead-letters what was
  never confirmed; Lambda leaves it parked) says it is not delivered (must be 0);
* **duplicates** - a (documentId, version) the handler saw more than once. Allowed only when the
  deliveries belong to different *runs* (a crash, SIGKILL or a container replaced in between:
  effects done, de-duplication marks not yet written); within one run they count as failures;
* **order violations** - per document, a revision delivered after a higher version of the same
  document without ``ctx.late`` set. A delivery that another run repeats later (it was in flight
  when its run died) is left out of this count: the repetition is the delivery that counts;
* **max parked / held** - the most records waiting in the gate (parked for a block summary or a
  confirming link) and held by the reorder policy at any time.

Runners:

* :func:`run_pipeline` - the in-process :class:`~qldbstream.pipeline.batch.Pipeline`: shards' batches
  interleaved at random (seeded) with random sizes, checkpoints honoured as a runtime would
  (``checkpoint``, ``first_unfinished``/``halted`` -> read again from the checkpoint,
  ``other_checkpoints``), crashes (a :class:`Crash` raised inside the handler after it did its
  work, like a SIGKILL) followed by a restart from the saved checkpoints with a fresh pipeline (the
  de-duplication store kept, the in-memory gate store lost), ``drain()`` at the end of the input.
  Every saved checkpoint is checked: no record at or before it may be neither delivered nor
  dead-lettered. With ``journal_order`` the pipeline is the one the standalone worker builds
  (``App.pipeline(journal_order=True)``) and its watermark is set before each batch as the worker
  sets it. The pipeline's clock is fake (50 ms per batch; past the reorder window and the gap
  timeout at the end of the input).
* :func:`run_lambda` - an event-source-mapping emulator: per shard a cursor and one invocation in
  flight, events of up to ``batch_size`` records, shards invoked interleaved (one thread, seeded)
  or concurrently (one thread per shard); the cursor moves to the reported ``itemIdentifier``
  (or past the batch), a failed invocation is retried with the same batch in a new container.
  Each shard has its own :class:`~qldbstream.app.assembly.App` (its own container), sharing only the
  DynamoDB gate and de-duplication tables (moto server) and the recorder. A run ends when a
  container dies: two deliveries of one revision by live containers count as a duplicate within a
  run.
* :func:`evaluate` on the JSON lines written by :func:`file_recorder` (``QLDBSTREAM_HANDLERS=
  tests.support.delivery_matrix:file_recorder``) for the subprocess runtimes (``qldbstream run``,
  the KCL daemon).

Each runner prints one line per cell (:meth:`CellResult.line`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qldbstream.api.handler import Handler, HandlerContext
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.gate import Delivery as DeliveryMode
from qldbstream.pipeline.batch import BatchResult, Pipeline
from qldbstream.pipeline.dlq import DeadLetter
from qldbstream.pipeline.stores import InMemoryDedupeStore, InMemoryGateStore
from qldbstream.runtimes.aws_lambda import LambdaHandler, make_handler
from tests.support.forge import Delivery, GroundTruth, ShardRecord

__all__ = [
    "CellResult",
    "Crash",
    "FileRecorder",
    "LockedDLQ",
    "RecordingHandler",
    "Seen",
    "assert_cell",
    "count_parked",
    "evaluate",
    "file_recorder",
    "quiet_warnings",
    "read_seen",
    "resume_index",
    "run_lambda",
    "run_pipeline",
]

Key = tuple[str, int]
Position = tuple[int, int]
KPL_MAGIC = b"\xf3\x89\x9a\xc2"


class Crash(BaseException):
    """A simulated SIGKILL inside a handler: its effects are done, nothing after them happens.

    A ``BaseException`` so that the pipeline's ``except Exception`` (retries, dead-lettering) does
    not catch it: it leaves ``Pipeline.process`` (and the Lambda handler) like a dying process.
    """


# --- what the handler saw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One revision delivered to the handler."""

    document_id: str
    version: int
    hash: str  # hex of revision.hash as delivered
    late: bool
    shard: str | None
    #: which run delivered it: a crash, a SIGKILL or a replaced container starts a new one
    run: str

    @property
    def key(self) -> Key:
        return (self.document_id, self.version)


class RecordingHandler(Handler):
    """Records every revision and block summary delivered to it (thread-safe), in order.

    ``crash_after``: once this many revisions were recorded in total, raise :class:`Crash` (once)
    right after recording (the effect happened; the pipeline never gets to commit it).
    """

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.blocks: list[tuple[int, str]] = []  # (block sequenceNo, run)
        self.run = "run-0"
        self.crash_after: list[int] = []
        self.lock = threading.RLock()
        #: per thread: the run it delivers for (Lambda containers); falls back to ``run``
        self._local = threading.local()

    def set_thread_run(self, run: str) -> None:
        self._local.run = run

    def current_run(self) -> str:
        return str(getattr(self._local, "run", self.run))

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        run = self.current_run()
        for i, record in enumerate(records):
            late = i in ctx.late_indexes
            with self.lock:
                if isinstance(record, RevisionDetails):
                    self.seen.append(
                        Seen(record.document_id, record.version, record.hash.hex(), late, ctx.shard_id, run)
                    )
                    if self.crash_after and len(self.seen) >= self.crash_after[0]:
                        self.crash_after.pop(0)
                        raise Crash(f"crash after {len(self.seen)} revisions")
                elif isinstance(record, BlockSummary):
                    self.blocks.append((record.block_address.sequence_no, run))

    def keys(self) -> set[Key]:
        with self.lock:
            return {s.key for s in self.seen}


class FileRecorder(Handler):
    """The recorder for subprocess runtimes: one JSON line per delivered revision or block summary
    (``kind``, ``doc``, ``version``, ``hash``, ``late``, ``shard``, ``run`` = ``<worker>:<pid>``),
    appended and flushed before ``handle_batch`` returns (the effect is done before any commit)."""

    name = "recorder"

    def __init__(self, settings: Mapping[str, str]) -> None:
        self.path = Path(settings["path"])
        self.worker = settings.get("worker", "")
        #: seconds each call waits after writing (slows a run down so that it can be killed mid-way)
        self.delay = float(settings.get("delay", "0"))

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        run = f"{self.worker}:{os.getpid()}"
        lines = []
        for i, record in enumerate(records):
            if isinstance(record, RevisionDetails):
                entry: dict[str, Any] = {
                    "kind": "rev",
                    "doc": record.document_id,
                    "version": record.version,
                    "hash": record.hash.hex(),
                    "late": i in ctx.late_indexes,
                }
            elif isinstance(record, BlockSummary):
                entry = {"kind": "block", "seq": record.block_address.sequence_no}
            else:
                continue
            entry |= {"shard": ctx.shard_id, "run": run}
            lines.append(json.dumps(entry) + "\n")
        if lines:
            with self.path.open("a", encoding="utf-8") as out:
                out.write("".join(lines))
                out.flush()
                os.fsync(out.fileno())
        if self.delay:
            time.sleep(self.delay)


def file_recorder(settings: Mapping[str, str]) -> Handler:
    """The plugin factory (``QLDBSTREAM_HANDLERS=tests.support.delivery_matrix:file_recorder``,
    ``QLDBSTREAM_HANDLER_FILE_RECORDER__PATH=...``, optional ``...__WORKER`` and ``...__DELAY``)."""
    return FileRecorder(settings)


def read_seen(path: Path, *, run_by_worker: bool = False) -> tuple[list[Seen], list[tuple[int, str]]]:
    """The revisions and block summaries a :class:`FileRecorder` wrote (a torn last line is ignored).

    A run is a process (``<worker>:<pid>``), or with ``run_by_worker`` a worker (the KCL: one worker
    runs a record processor per shard; only a worker's death starts a new run)."""
    seen: list[Seen] = []
    blocks: list[tuple[int, str]] = []
    if not path.exists():
        return seen, blocks
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by SIGKILL
        run = entry["run"].rsplit(":", 1)[0] if run_by_worker else entry["run"]
        if entry["kind"] == "rev":
            seen.append(
                Seen(entry["doc"], entry["version"], entry["hash"], entry["late"], entry["shard"], run)
            )
        else:
            blocks.append((entry["seq"], run))
    return seen, blocks


class LockedDLQ:
    """An in-memory dead-letter queue that several threads may write to."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self._lock = threading.Lock()

    def put(self, letter: DeadLetter) -> None:
        with self._lock:
            self.letters.append(letter)

    def receive(self, limit: int = 10) -> Iterator[tuple[str, DeadLetter]]:
        return iter(())

    def delete(self, handle: str) -> None:
        pass


# --- judging a cell --------------------------------------------------------------------------------


@dataclass
class CellResult:
    cell: str
    mode: str
    expected: int
    authentic_delivered: int
    forged_delivered: int
    unconfirmed_delivered: int
    duplicates: int
    #: duplicates whose deliveries all belong to one run (never allowed)
    duplicates_within_run: int
    order_violations: int
    late_flagged: int
    #: None: not observable (a subprocess runtime)
    max_parked: int | None
    max_held: int | None
    dead_letters: int
    #: doubtful revisions (truth.doubtful) that were held back instead of delivered (allowed)
    doubtful_held: int = 0
    restarts: int = 0
    #: checkpoints that passed a record neither delivered nor dead-lettered
    checkpoint_violations: list[str] = field(default_factory=list)
    #: shards whose final checkpoint is not at their last record (in-process runner)
    unfinished_shards: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    within_run_duplicates: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    notes: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.forged_delivered
            or self.unconfirmed_delivered
            or self.duplicates_within_run
            or self.order_violations
            or self.checkpoint_violations
            or self.unfinished_shards
        )

    def line(self) -> str:
        extra = f", restarts {self.restarts}" if self.restarts else ""
        if self.doubtful_held:
            extra += f", doubtful held {self.doubtful_held}"
        if self.checkpoint_violations:
            extra += f", CHECKPOINT VIOLATIONS {len(self.checkpoint_violations)}"
        if self.unfinished_shards:
            extra += f", UNFINISHED SHARDS {len(self.unfinished_shards)}"
        if self.notes:
            extra += f", {self.notes}"
        return (
            f"[matrix] {self.cell} [{self.mode}]: authentic {self.authentic_delivered}/{self.expected}, "
            f"forged {self.forged_delivered}, unconfirmed {self.unconfirmed_delivered}, "
            f"duplicates {self.duplicates} (within a run {self.duplicates_within_run}), "
            f"order violations {self.order_violations} (late-flagged {self.late_flagged}), "
            f"max parked {_n(self.max_parked)} / held {_n(self.max_held)}, DLQ {self.dead_letters}{extra}, "
            f"{self.elapsed:.1f} s{'' if self.ok else '  <-- FAIL'}"
        )

    def details(self) -> str:
        parts = [self.line()]
        for name in ("missing", "forged", "unconfirmed", "violations", "within_run_duplicates"):
            values = getattr(self, name)
            if values:
                parts.append(f"  {name} ({len(values)}): " + "; ".join(values[:8]))
        for name in ("checkpoint_violations", "unfinished_shards"):
            values = getattr(self, name)
            if values:
                parts.append(f"  {name} ({len(values)}): " + "; ".join(values[:5]))
        return "\n".join(parts)


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _letter_reasons(letters: Sequence[DeadLetter]) -> dict[Key, str]:
    out: dict[Key, str] = {}
    for letter in letters:
        if letter.document_id is not None and letter.version is not None:
            checks = "/".join(f.get("check", "?") for f in letter.verification_failures) or letter.stage
            out.setdefault((letter.document_id, letter.version), f"{checks}: {letter.error_message[:140]}")
    return out


def evaluate(
    cell: str,
    truth: GroundTruth,
    mode: str,
    seen: Sequence[Seen],
    *,
    letters: Sequence[DeadLetter] = (),
    dead_letters: int | None = None,
    max_parked: int | None = None,
    max_held: int | None = None,
    restarts: int = 0,
    elapsed: float = 0.0,
    checkpoint_violations: Sequence[str] = (),
    unfinished_shards: Sequence[str] = (),
    notes: str = "",
    stale_may_drop: bool = False,
) -> CellResult:
    """Judge what the handler saw against the forge's ground truth (see the module docstring).

    ``stale_may_drop``: the handler's late policy drops a revision older than one delivered
    (``reorder``, ``drop``): such a revision is counted as dropped, not missing."""
    facts = {f.key: f for f in truth.revisions}
    expected = {f.key for f in truth.deliverable(mode)}
    doubtful = {f.key for f in truth.doubtful(mode)}
    withheld = truth.withheld(mode)
    awaiting = {f.key for f in truth.awaiting(mode)}
    reasons = _letter_reasons(letters)

    delivered = {s.key for s in seen}
    forged: dict[Key, str] = {}
    for s in seen:
        fact = facts.get(s.key)
        if fact is None:
            forged[s.key] = "not in the stream at all"
        elif s.key in withheld:
            forged[s.key] = f"withheld by rung {withheld[s.key]}"
        elif s.hash != fact.hash.hex():
            forged[s.key] = f"hash {s.hash[:12]} is not the stream's {fact.hash.hex()[:12]}"
    unconfirmed = sorted(delivered & awaiting)
    missing = sorted(expected - delivered - doubtful)
    dropped: list[Key] = []
    if stale_may_drop:
        newest: dict[str, int] = {}
        for s in seen:
            newest[s.document_id] = max(newest.get(s.document_id, -1), s.version)
        dropped = [k for k in missing if newest.get(k[0], -1) > k[1]]
        missing = [k for k in missing if k not in dropped]

    runs_of: dict[Key, list[str]] = defaultdict(list)
    for s in seen:
        runs_of[s.key].append(s.run)
    duplicates = sum(len(r) - 1 for r in runs_of.values())
    within: list[str] = []
    for key, runs in runs_of.items():
        repeats = Counter(runs)
        extra = sum(n - 1 for n in repeats.values())
        if extra:
            within.append(f"{key[0]} v{key[1]} x{len(runs)} in {dict(repeats)}")
    within_count = sum(sum(n - 1 for n in Counter(r).values()) for r in runs_of.values())

    # order: leave out deliveries that a later run repeated (they were in flight at a crash)
    # (a delivery another run repeats later was in flight when its run died)
    repeated: set[int] = set()
    later_runs: dict[Key, set[str]] = defaultdict(set)
    for i in range(len(seen) - 1, -1, -1):
        s = seen[i]
        if later_runs[s.key] - {s.run}:
            repeated.add(i)
        later_runs[s.key].add(s.run)
    highest: dict[str, int] = {}
    violations: list[str] = []
    late_flagged = 0
    for i, s in enumerate(seen):
        if i in repeated:
            continue
        top = highest.get(s.document_id, -1)
        if s.late:
            late_flagged += 1
        if s.version < top and not s.late:
            violations.append(f"{s.document_id} v{s.version} after v{top} (shard {s.shard}, {s.run})")
        highest[s.document_id] = max(top, s.version)

    result = CellResult(
        cell=cell,
        mode=mode,
        expected=len(expected),
        authentic_delivered=len(delivered & expected),
        forged_delivered=len(forged),
        unconfirmed_delivered=len(unconfirmed),
        duplicates=duplicates,
        duplicates_within_run=within_count,
        order_violations=len(violations),
        late_flagged=late_flagged,
        max_parked=max_parked,
        max_held=max_held,
        dead_letters=len(letters) if dead_letters is None else dead_letters,
        doubtful_held=len(doubtful - delivered),
        restarts=restarts,
        checkpoint_violations=list(checkpoint_violations),
        unfinished_shards=list(unfinished_shards),
        missing=[
            f"{d} v{v} (block {facts[(d, v)].sequence_no}; "
            f"{reasons.get((d, v), 'never delivered, not in the DLQ')})"
            for d, v in missing
        ],
        forged=[f"{d} v{v}: {why}" for (d, v), why in sorted(forged.items())],
        unconfirmed=[f"{d} v{v} (block {facts[(d, v)].sequence_no})" for d, v in unconfirmed],
        violations=violations,
        within_run_duplicates=within,
        elapsed=elapsed,
        notes=", ".join(n for n in (f"stale dropped {len(dropped)}" if stale_may_drop else "", notes) if n),
    )
    print(result.line(), flush=True)
    return result


def assert_cell(result: CellResult, *, unconfirmed_allowed: bool = False) -> None:
    """The matrix's assertions, with every detail in the message - the same in every runtime,
    concurrent processes included (Lambda containers, KCL record processors: the shared
    de-duplication store's claims make them hold, docs/delivery.md)."""
    problems = []
    if result.forged_delivered:
        problems.append("forged revisions were delivered")
    if result.unconfirmed_delivered and not unconfirmed_allowed:
        problems.append("revisions no successor confirmed were delivered")
    if result.missing:
        problems.append("authentic revisions were not delivered")
    if result.duplicates_within_run:
        problems.append("the handler saw duplicates within one run")
    if result.order_violations:
        problems.append("older versions were delivered after newer ones without ctx.late")
    if result.checkpoint_violations:
        problems.append("a checkpoint passed a record that was neither delivered nor dead-lettered")
    if result.unfinished_shards:
        problems.append("a shard's checkpoint did not reach its last record")
    assert not problems, "; ".join(problems) + "\n" + result.details()


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """The forgeries make the pipeline log a warning per withheld record: keep only errors (the
    cell's line and its details say what was withheld and why)."""
    logger = logging.getLogger("qldbstream")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- positions -------------------------------------------------------------------------------------


def _aggregated(record: ShardRecord) -> bool:
    return record.data[:4] == KPL_MAGIC


def resume_index(records: Sequence[ShardRecord], checkpoint: tuple[str, int] | None) -> int:
    """The index of the first Kinesis record to read again after ``checkpoint`` (as the worker and
    the KCL resume: after the checkpointed user record; an aggregate it stopped inside is read again)."""
    if checkpoint is None:
        return 0
    seq, sub = int(checkpoint[0]), checkpoint[1]
    for i, r in enumerate(records):
        s = int(r.sequence_number)
        if s == seq:
            if _aggregated(r) and sub < len(r.user_records) - 1:
                return i
            return i + 1
        if s > seq:
            return i
    return len(records)


def _user_positions(records: Sequence[ShardRecord]) -> list[tuple[Position, Any]]:
    out = []
    for r in records:
        for i, u in enumerate(r.user_records):
            out.append(((int(r.sequence_number), i if _aggregated(r) else 0), u))
    return out


def _last_position(records: Sequence[ShardRecord]) -> Position | None:
    positions = _user_positions(records)
    return positions[-1][0] if positions else None


# --- (a) the in-process pipeline -----------------------------------------------------------------


class _Clock:
    """The pipeline's monotonic clock: moves 50 ms per batch, and past the reorder window at the end."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds or 0.0


@dataclass
class _Tracker:
    """Checks every saved checkpoint of the in-process runner against what is done."""

    shards: dict[str, list[tuple[Position, Any]]]
    recorder: RecordingHandler
    dlq: LockedDLQ
    checkpoints: dict[str, tuple[str, int] | None]
    #: the late policy drops a revision older than one delivered (reorder, drop): that finishes it
    stale_may_drop: bool = False
    violations: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def save(self, shard: str | None, checkpoint: tuple[str, int]) -> None:
        if shard is None or shard not in self.shards:
            return
        old = self.checkpoints.get(shard)
        if old is not None and (int(checkpoint[0]), checkpoint[1]) < (int(old[0]), old[1]):
            self.violations.append(f"{shard}: checkpoint moved back from {old} to {checkpoint}")
        self.checkpoints[shard] = checkpoint
        self._check(shard, (int(checkpoint[0]), checkpoint[1]))

    def _check(self, shard: str, upto: Position) -> None:
        done_revisions = self.recorder.keys()
        top: dict[str, int] = {}
        for doc, version in done_revisions:
            top[doc] = max(top.get(doc, -1), version)
        done_blocks = {seq for seq, _ in self.recorder.blocks}
        dead_revisions = {
            (lt.document_id, lt.version) for lt in self.dlq.letters if lt.document_id is not None
        }
        dead_blocks = {
            lt.block_sequence_no for lt in self.dlq.letters if lt.document_id is None and lt.block_sequence_no
        }
        start = self.checked.get(shard, 0)
        records = self.shards[shard]
        i = start
        while i < len(records) and records[i][0] <= upto:
            position, user = records[i]
            if user.kind == "REVISION_DETAILS":
                key = (user.document_id, user.version)
                stale = self.stale_may_drop and top.get(key[0], -1) > key[1]
                if key not in done_revisions and key not in dead_revisions and not stale:
                    self.violations.append(
                        f"{shard}: checkpoint {upto} passed revision {key[0]} v{key[1]} at {position}, "
                        "neither delivered nor dead-lettered"
                    )
            elif user.kind == "BLOCK_SUMMARY" and user.sequence_no not in done_blocks | dead_blocks:
                self.violations.append(
                    f"{shard}: checkpoint {upto} passed block summary {user.sequence_no} at {position}, "
                    "neither delivered nor dead-lettered"
                )
            i += 1
        self.checked[shard] = i


def run_pipeline(delivery: Delivery, **kwargs: Any) -> CellResult:
    """Run the in-process pipeline over ``delivery`` (see :func:`_run_pipeline`), warnings quiet."""
    with quiet_warnings():
        return _run_pipeline(delivery, **kwargs)


def _run_pipeline(
    delivery: Delivery,
    *,
    cell: str,
    mode: str = "verified",
    seed: int = 0,
    batch_max: int = 20,
    crashes: Sequence[float] = (),
    settings: Mapping[str, Any] | None = None,
    time_limit: float = 30.0,
    journal_order: bool = False,
) -> CellResult:
    """Run the in-process pipeline over ``delivery`` (see the module docstring).

    ``crashes``: fractions of the expected revisions after which the handler crashes (e.g.
    ``(0.3, 0.7)``); each crash throws the pipeline away and restarts from the saved checkpoints.
    ``settings``: :class:`~qldbstream.app.config.Settings` fields other than the defaults.
    ``journal_order``: the pipeline the standalone worker builds (``App.pipeline(journal_order=
    True)``), its watermark set before each batch as the worker sets it (the arrival time up to
    which every shard not read to its end has been read).
    """
    started = time.monotonic()
    truth = delivery.journal.truth
    rng = random.Random(seed * 7_919 + 101)
    recorder = RecordingHandler()
    expected = len(truth.deliverable(mode))
    recorder.crash_after = sorted(max(1, round(expected * f)) for f in crashes)
    dedupe = InMemoryDedupeStore()
    dlq = LockedDLQ()
    config = Settings(delivery=DeliveryMode(mode), **dict(settings or {}))
    records = {s.shard_id: s.records for s in delivery.shards if s.records}
    checkpoints: dict[str, tuple[str, int] | None] = dict.fromkeys(records)
    stale_may_drop = config.late_policy.value in ("reorder", "drop")
    tracker = _Tracker(
        {sid: _user_positions(rs) for sid, rs in records.items()}, recorder, dlq, checkpoints, stale_may_drop
    )

    clock = _Clock()

    def new_pipeline() -> Pipeline:
        app = App(config, handlers=[recorder], dlq=dlq, store=dedupe, gate_store=InMemoryGateStore())
        return app.pipeline(clock=clock, sleep=clock.sleep, journal_order=journal_order)

    pipeline = new_pipeline()
    cursor = dict.fromkeys(records, 0)
    max_parked = max_held = restarts = halts = 0

    def observe(result: BatchResult) -> None:
        nonlocal max_parked, max_held
        store = pipeline.gate_store
        parked = store.parked_count() if isinstance(store, InMemoryGateStore) else result.parked
        max_parked = max(max_parked, parked)
        max_held = max(max_held, sum(p.holding for p in pipeline.planners.values()))
        if result.checkpoint is not None:
            tracker.save(result.shard_id, result.checkpoint)
        for other, checkpoint in result.other_checkpoints.items():
            tracker.save(other, checkpoint)

    def restart() -> None:
        nonlocal pipeline, restarts
        restarts += 1
        recorder.run = f"run-{restarts}"
        pipeline = new_pipeline()
        for sid, rs in records.items():
            cursor[sid] = resume_index(rs, checkpoints[sid])
            tracker.checked[sid] = 0

    while True:
        if time.monotonic() - started > time_limit:
            raise AssertionError(f"cell {cell}: not done within {time_limit:g} s (cursors {cursor})")
        active = [sid for sid, rs in records.items() if cursor[sid] < len(rs)]
        if not active:
            # the end of the input: what is held is released by time, what is parked is decided
            # now; a crash here restarts from the checkpoints and reads again what they left
            clock.now += max(config.reorder_window_seconds, config.order_gap_seconds) + 1
            if journal_order:
                pipeline.watermark = float("inf")  # every shard is at its tip
            try:
                for sid in records:
                    if pipeline.waiting(sid):
                        observe(pipeline.process(sid, []))
                observe(pipeline.drain())
            except Crash:
                restart()
                continue
            break
        sid = rng.choice(active)
        batch = records[sid][cursor[sid] : cursor[sid] + rng.randint(1, batch_max)]
        clock.now += 0.05
        if journal_order:
            read = {k: cursor[k] + (len(batch) if k == sid else 0) for k in records}
            marks = [
                records[k][read[k] - 1].arrival if read[k] else float("-inf")
                for k in records
                if read[k] < len(records[k])
            ]
            pipeline.watermark = min(marks, default=float("inf"))
        try:
            result = pipeline.process(sid, [r.kinesis_record(delivery.stream_arn) for r in batch])
        except Crash:
            restart()
            continue
        observe(result)
        if result.halted or (result.first_unfinished is not None and result.held == 0):
            halts += 1
            if halts > 200:
                raise AssertionError(f"cell {cell}: shard {sid} halts again and again: {result.halt_reason}")
            cursor[sid] = resume_index(records[sid], checkpoints[sid])
        else:
            cursor[sid] += len(batch)
    unfinished = []
    for sid, rs in records.items():
        last = _last_position(rs)
        cp = checkpoints[sid]
        at = None if cp is None else (int(cp[0]), cp[1])
        if pipeline.waiting(sid) or at != last:
            unfinished.append(f"{sid}: checkpoint {at}, last record {last}, waiting {pipeline.waiting(sid)}")
    return evaluate(
        cell,
        truth,
        mode,
        recorder.seen,
        letters=dlq.letters,
        max_parked=max_parked,
        max_held=max_held,
        restarts=restarts,
        elapsed=time.monotonic() - started,
        checkpoint_violations=tracker.violations,
        unfinished_shards=unfinished,
        stale_may_drop=stale_may_drop,
    )


# --- (b) the Lambda event-source-mapping emulator -----------------------------------------------


class _ErrorCounter(logging.Handler):
    """Counts log records that say a store failed (the batch halted and was retried)."""

    def __init__(self, *phrases: str) -> None:
        super().__init__(logging.ERROR)
        self.phrases = phrases
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if any(p in record.getMessage() for p in self.phrases):
            self.count += 1


class _Context:
    """What a Lambda context offers the handler: the remaining time."""

    def __init__(self, millis: int = 60_000) -> None:
        self.deadline = time.monotonic() + millis / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def count_parked(dynamodb: Any, table: str) -> int:
    count = 0
    kwargs: dict[str, Any] = {
        "TableName": table,
        "Select": "COUNT",
        "FilterExpression": "begins_with(sk, :p)",
        "ExpressionAttributeValues": {":p": {"S": "parked#"}},
        "ConsistentRead": True,
    }
    while True:
        page = dynamodb.scan(**kwargs)
        count += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def run_lambda(delivery: Delivery, **kwargs: Any) -> CellResult:
    """Emulate a Kinesis event source mapping over ``delivery`` (see :func:`_run_lambda`), warnings quiet."""
    with quiet_warnings():
        return _run_lambda(delivery, **kwargs)


def _run_lambda(
    delivery: Delivery,
    *,
    cell: str,
    dynamodb_endpoint: str,
    client: Callable[[str, str], Any],
    mode: str = "verified",
    seed: int = 0,
    batch_size: int = 10,
    concurrent: bool = True,
    crashes: Sequence[float] = (),
    settings: Mapping[str, Any] | None = None,
    time_limit: float = 90.0,
) -> CellResult:
    """Emulate a Kinesis event source mapping over ``delivery`` (see the module docstring).

    ``client(service, endpoint)`` makes boto3 clients (``tests.support.aws.client``). Tables are
    created here (``gate-<id>``, ``dedupe-<id>``) and deleted at the end. ``crashes``: fractions of
    the expected revisions after which the function dies mid-batch (a new container retries it).
    """
    started = time.monotonic()
    truth = delivery.journal.truth
    ddb = client("dynamodb", dynamodb_endpoint)
    suffix = uuid.uuid4().hex[:10]
    gate_table, dedupe_table = f"matrix-gate-{suffix}", f"matrix-dedupe-{suffix}"
    from qldbstream.io.dedupe_dynamodb import DynamoDBDedupeStore
    from qldbstream.io.gate_dynamodb import DynamoDBGateStore

    DynamoDBGateStore.create_table(ddb, gate_table)
    DynamoDBDedupeStore.create_table(ddb, dedupe_table)
    recorder = RecordingHandler()
    expected = len(truth.deliverable(mode))
    recorder.crash_after = sorted(max(1, round(expected * f)) for f in crashes)
    dlq = LockedDLQ()
    config = Settings(
        delivery=DeliveryMode(mode),
        gate_store=f"dynamodb:{gate_table}",
        dedupe_store=f"dynamodb:{dedupe_table}",
        dynamodb_endpoint_url=dynamodb_endpoint,
        region="us-east-1",
        **dict(settings or {}),
    )
    build_lock = threading.Lock()
    containers = Counter[str]()
    results: list[BatchResult] = []
    errors: list[BaseException] = []
    invocations = Counter[str]()
    stop = threading.Event()

    def container(shard: str) -> LambdaHandler:
        with build_lock:  # boto3 client creation is not thread-safe
            containers[shard] += 1
            app = App(
                config,
                handlers=[recorder],
                dlq=dlq,
                clients=lambda service: client(service, dynamodb_endpoint),
            )
            handler = make_handler(app)
        inner = handler.pipeline.process

        def process(*args: Any, **kwargs: Any) -> BatchResult:
            result = inner(*args, **kwargs)
            with build_lock:
                results.append(result)
            return result

        handler.pipeline.process = process  # type: ignore[method-assign]
        return handler

    shards = {s.shard_id: s.records for s in delivery.shards if s.records}
    cursors = dict.fromkeys(shards, 0)
    handlers = {sid: container(sid) for sid in shards}
    stalls = Counter[str]()
    generation = [0]

    def step(sid: str) -> bool:
        """One invocation for ``sid``; False when the shard is read to its end."""
        records = shards[sid]
        if cursors[sid] >= len(records):
            return False
        batch = records[cursors[sid] : cursors[sid] + batch_size]
        # a run ends when a container dies: duplicates across that are allowed, any other is not
        recorder.set_thread_run(f"run-{generation[0]}")
        invocations[sid] += 1
        try:
            response = handlers[sid](delivery.lambda_event(batch), _Context())
        except Crash:
            with build_lock:
                generation[0] += 1
            handlers[sid] = container(sid)  # the container died: a new one retries the same batch
            return True
        failures = response.get("batchItemFailures") or []
        if failures:
            seq = failures[0]["itemIdentifier"]
            index = next(i for i, r in enumerate(batch) if r.sequence_number == seq)
            cursors[sid] += index
            stalls[sid] = stalls[sid] + 1 if index == 0 else 0
            if stalls[sid] > 50:
                reason = next((r.halt_reason for r in reversed(results) if r.halted), None)
                raise AssertionError(f"cell {cell}: shard {sid} reports {seq} again and again: {reason}")
            if index == 0:
                time.sleep(0.05)  # Lambda backs off before retrying the same records
        else:
            cursors[sid] += len(batch)
        return True

    def shard_loop(sid: str) -> None:
        try:
            while not stop.is_set() and step(sid):
                if time.monotonic() - started > time_limit:
                    raise AssertionError(f"cell {cell}: shard {sid} not done within {time_limit:g} s")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    max_parked = 0
    sampler_ddb = client("dynamodb", dynamodb_endpoint)

    def sample() -> None:
        nonlocal max_parked
        while not stop.is_set():
            with contextlib.suppress(Exception):
                max_parked = max(max_parked, count_parked(sampler_ddb, gate_table))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    store_errors = _ErrorCounter("de-duplication store failed", "the delivery gate's store failed")
    logging.getLogger("qldbstream").addHandler(store_errors)
    try:
        if concurrent:
            threads = [threading.Thread(target=shard_loop, args=(sid,), daemon=True) for sid in shards]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=max(1.0, time_limit + 10 - (time.monotonic() - started)))
            if any(t.is_alive() for t in threads):
                stop.set()
                raise AssertionError(f"cell {cell}: invocations still running after {time_limit:g} s")
        else:
            rng = random.Random(seed * 31 + 7)
            while True:
                active = [sid for sid in shards if cursors[sid] < len(shards[sid])]
                if not active:
                    break
                if time.monotonic() - started > time_limit:
                    raise AssertionError(f"cell {cell}: not done within {time_limit:g} s")
                step(rng.choice(active))
        if errors:
            raise errors[0]
        stop.set()
        sampler.join(timeout=5)
        left = count_parked(ddb, gate_table)
        max_parked = max(max_parked, left)
        return evaluate(
            cell,
            truth,
            mode,
            recorder.seen,
            letters=dlq.letters,
            max_parked=max_parked,
            max_held=0,
            restarts=sum(containers.values()) - len(shards),
            elapsed=time.monotonic() - started,
            notes=f"invocations {sum(invocations.values())}, left parked {left}, "
            f"store errors {store_errors.count}",
        )
    finally:
        logging.getLogger("qldbstream").removeHandler(store_errors)
        stop.set()
        for table in (gate_table, dedupe_table):
            with contextlib.suppress(Exception):
                ddb.delete_table(TableName=table)
