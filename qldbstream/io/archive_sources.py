"""Bounded sources for replaying archives through the pipeline (``qldbstream run --source``).

Two kinds of archive, one shape out: :class:`ReplayBatch` es of one pseudo-shard's records, in the
order they are to be processed, each with the *watermark* (the arrival time up to which every
pseudo-shard has been read, for journal order: :mod:`qldbstream.core.order`).

* :class:`KinesisArchive` - saved Kinesis records: files or a directory of Lambda events, JSON Lines,
  ``get-records`` output, Ion or base64 lines (whatever :func:`qldbstream.io.files.read_file`
  reads). One pseudo-shard per Kinesis shard named in the records (Lambda events carry it in
  ``eventID``), else one per file. A shard's records are ordered by sequence number (a record saved
  twice is replayed once); a file's records without sequence numbers keep the file's order and are
  numbered 1, 2, ... so that a checkpoint can name them. Shards are merged by arrival time.
* :class:`ExportArchive` - a QLDB journal export (a directory or ``s3://`` URL) read by
  :mod:`qldbstream.io.journal_export`: one pseudo-shard per strand, blocks in journal order, each
  block's records (``BLOCK_SUMMARY`` + ``REVISION_DETAILS``) numbered ``(sequenceNo, index)``.

Resuming: ``batches(resume)`` skips what a checkpoint ``(sequence, sub-sequence)`` covers. A KPL
aggregate or an export block that the checkpoint covers only in part is read again whole, and so
is a covered Kinesis record holding the block summary of a revision still to do (a checkpoint can
pass a summary whose revision, on another shard or after a halt, was admitted but not finished):
the summary is needed to admit its revisions, and the de-duplication store skips what a handler
already did.

What happens next on errors: an unreadable file, a file of an unknown shape or a record that
cannot be read (invalid base64, no data) raises :class:`~qldbstream.core.errors.InputError` naming
it before anything is delivered - fix or remove the file, and run again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import BlockSummary, RevisionDetails, decode
from qldbstream.core.errors import InputError, MalformedKinesisRecordError, QldbStreamError
from qldbstream.core.order import SKEW
from qldbstream.core.records import KinesisRecord
from qldbstream.io.files import read_file
from qldbstream.io.shards import covered
from qldbstream.pipeline.checkpoint import sequence_key

__all__ = ["BATCH", "ExportArchive", "KinesisArchive", "ReplayBatch", "open_source"]

#: records per ``Pipeline.process`` call, at most
BATCH = 500
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """One pseudo-shard's next records, and how far every pseudo-shard has been read by then."""

    shard_id: str
    records: list[KinesisRecord]
    #: every pseudo-shard has been read up to this arrival time (``inf``: all of them to the end)
    watermark: float


def open_source(
    spec: str, *, s3_client: Any | None = None, batch: int = BATCH
) -> KinesisArchive | ExportArchive:
    """``records:PATH[,PATH...]`` (archived Kinesis records) or ``export:DIR-or-s3://URL``."""
    kind, _, where = spec.partition(":")
    if kind == "records" and where:
        return KinesisArchive([p for p in where.split(",") if p], batch=batch)
    if kind == "export" and where:
        return ExportArchive(where, s3_client=s3_client, batch=batch)
    raise InputError(
        f"--source {spec!r}: expected records:PATH (saved Kinesis records: files or a directory) "
        "or export:DIR-or-s3://BUCKET/PREFIX (a QLDB journal export)"
    )


# -- archived Kinesis records ---------------------------------------------------------------------


class KinesisArchive:
    """Saved Kinesis records (see the module docstring); read at once, replayed shard by shard."""

    #: the runtime asks the pipeline for journal order: shards are merged
    journal_order = True

    def __init__(self, paths: Sequence[str | Path], *, batch: int = BATCH) -> None:
        if not paths:
            raise InputError("records: give at least one file or directory of saved Kinesis records")
        self.location = "records:" + ",".join(str(Path(p).resolve()) for p in paths)
        self.batch = batch
        self.shards: dict[str, list[KinesisRecord]] = {}
        files = [f for p in paths for f in _files(Path(p))]
        if not files:
            raise InputError(f"{', '.join(map(str, paths))}: no files to read")
        for f in files:
            self._add(f)
        for shard_id, records in self.shards.items():
            self.shards[shard_id] = _ordered(records)

    def _add(self, path: Path) -> None:
        found = read_file(path)
        bad = [r for r in found.records if isinstance(r, MalformedKinesisRecordError)]
        if bad:
            raise InputError(
                f"{path}: {len(bad)} record(s) cannot be read, the first: {bad[0]}; fix or remove them "
                "(qldbstream inspect shows them) and run again"
            )
        for r in found.records:
            assert isinstance(r, KinesisRecord)
            shard = r.shard_id or str(path)
            self.shards.setdefault(shard, []).append(replace(r, shard_id=shard))

    def totals(self) -> dict[str, int]:
        return {shard: len(records) for shard, records in self.shards.items()}

    def batches(self, resume: Mapping[str, tuple[str, int]]) -> Iterator[ReplayBatch]:
        """The records after each shard's ``resume`` position, merged over the shards by arrival time;
        on a resume, first the covered records holding the block summaries of revisions still to do."""
        todo = {shard: _after(records, resume.get(shard)) for shard, records in self.shards.items()}
        if resume:
            again = _summaries_needed(self.shards, todo)
            todo = {shard: again.get(shard, []) + records for shard, records in todo.items()}
        at = dict.fromkeys(todo, 0)

        def next_arrival(shard: str) -> float:
            records = todo[shard]
            if at[shard] >= len(records):
                return _INF
            arrival = records[at[shard]].approximate_arrival_timestamp
            return -_INF if arrival is None else arrival

        while True:
            heads = [(next_arrival(s), s) for s in todo if at[s] < len(todo[s])]
            if not heads:
                return
            _, shard = min(heads)
            until = min((a for a, s in heads if s != shard), default=_INF)
            start = at[shard]
            end = start + 1
            while end < len(todo[shard]) and end - start < self.batch:
                arrival = todo[shard][end].approximate_arrival_timestamp
                if arrival is not None and arrival > until + SKEW:
                    break
                end += 1
            at[shard] = end
            mark = min((next_arrival(s) for s in todo), default=_INF)
            yield ReplayBatch(shard, todo[shard][start:end], mark)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            f
            for f in path.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
        )
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return [path]


def _ordered(records: list[KinesisRecord]) -> list[KinesisRecord]:
    """By sequence number, each saved copy once; without sequence numbers: file order, numbered."""
    if all(r.sequence_number.isdigit() for r in records):
        unique = {r.sequence_number: r for r in reversed(records)}  # the first copy wins
        return sorted(unique.values(), key=lambda r: int(r.sequence_number))
    return [replace(r, sequence_number=str(n)) for n, r in enumerate(records, 1)]


def _after(records: list[KinesisRecord], resume: tuple[str, int] | None) -> list[KinesisRecord]:
    """The records a checkpoint does not cover (one it covers in part is read again whole)."""
    if resume is None:
        return records
    seq = sequence_key(*resume)[0]
    out = []
    for r in records:
        own = int(r.sequence_number)
        if own < seq or (own == seq and covered(r.data, resume[1])):
            continue
        out.append(r)
    return out


def _blocks(record: KinesisRecord) -> Iterator[tuple[type, tuple[str, int]]]:
    """(record type, block key) of each journal record in ``record`` that decodes (poison: none)."""
    try:
        users = deaggregate(record)
    except QldbStreamError:
        return
    for user in users:
        try:
            journal = decode(user)
        except QldbStreamError:
            continue
        if isinstance(journal, BlockSummary | RevisionDetails):
            address = journal.block_address
            yield type(journal), (address.strand_id, address.sequence_no)


def _summaries_needed(
    shards: Mapping[str, list[KinesisRecord]], todo: Mapping[str, list[KinesisRecord]]
) -> dict[str, list[KinesisRecord]]:
    """The covered records to read again: those holding the block summary of a revision still to do.

    A checkpoint may have passed a block summary whose revision (on another shard, or after a halt)
    was not finished: read again without its summary, that revision could not be verified."""
    present: set[tuple[str, int]] = set()
    needed: set[tuple[str, int]] = set()
    for records in todo.values():
        for record in records:
            for kind, key in _blocks(record):
                (present if kind is BlockSummary else needed).add(key)
    needed -= present
    out: dict[str, list[KinesisRecord]] = {}
    for shard, records in shards.items():
        rest = todo.get(shard, [])
        first = rest[0] if rest else None
        covered_ = records[: records.index(first)] if first is not None else records
        for record in reversed(covered_):  # summaries sit just before the checkpoint: look back
            if not needed:
                break
            keys = {key for kind, key in _blocks(record) if kind is BlockSummary} & needed
            if keys:
                out.setdefault(shard, []).insert(0, record)
                needed -= keys
    return out


# -- journal exports ------------------------------------------------------------------------------


class ExportArchive:
    """A QLDB journal export through :func:`qldbstream.io.journal_export.open_export`."""

    #: an export's blocks come in journal order, one pseudo-shard per strand: nothing to merge
    journal_order = False

    def __init__(self, location: str, *, s3_client: Any | None = None, batch: int = BATCH) -> None:
        try:
            from qldbstream.io.journal_export import open_export
        except ImportError as exc:  # pragma: no cover - the reader ships with qldbstream
            raise InputError(
                f"export:{location}: the journal export reader is not available ({exc})"
            ) from None
        local = not location.startswith("s3://")  # the same key from any working directory
        self.export = open_export(str(Path(location).resolve()) if local else location, s3_client=s3_client)
        self.location = f"export:{self.export.location}"
        self.batch = batch

    def totals(self) -> dict[str, int]:
        """Records per strand are known only once read: none up front."""
        return {}

    def batches(self, resume: Mapping[str, tuple[str, int]]) -> Iterator[ReplayBatch]:
        """Blocks after each strand's ``resume`` position, a batch of whole blocks of one strand."""
        strands = list(self.export.strand_ids)
        after: tuple[str, int] | None = None
        if len(strands) == 1 and strands[0] in resume:  # the reader starts there; a partial block again
            after = (strands[0], int(resume[strands[0]][0]) - 1)
        pending: list[KinesisRecord] = []
        strand: str | None = None
        for block in self.export.blocks(after=after):
            records = [
                replace(
                    r,
                    sequence_number=str(block.sequence_no),
                    sub_sequence_number=i,
                    shard_id=block.strand_id,
                    source=r.source or f"{block.object_key} block {block.sequence_no}",
                )
                for i, r in enumerate(block.records)
            ]
            done = resume.get(block.strand_id)
            if records and done is not None:
                seq, sub = sequence_key(*done)
                if block.sequence_no < seq or (block.sequence_no == seq and sub >= len(records) - 1):
                    continue
            if pending and (block.strand_id != strand or len(pending) + len(records) > self.batch):
                assert strand is not None
                yield ReplayBatch(strand, pending, _INF)
                pending = []
            strand = block.strand_id
            pending.extend(records)
        if pending and strand is not None:
            yield ReplayBatch(strand, pending, _INF)
