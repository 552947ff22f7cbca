"""Reading back what the worker and its handlers produced: files under the output directory and
what they wrote to the local AWS (SQS, SNS via an SQS inbox, DynamoDB, the replica stream).

Each reader returns plain data; :mod:`qldbstream_tools.demo.checks` compares it with the ground truth.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qldbstream.pipeline.dlq import DeadLetter

if TYPE_CHECKING:
    from qldbstream_handlers.workflow.interpreter import Execution, Interpreter

    from qldbstream.core.records import KinesisRecord
    from qldbstream.pipeline.batch import BatchResult, Pipeline

__all__ = [
    "BatchRecorder",
    "ExportFiles",
    "ReadBack",
    "RouteRecorder",
    "VelocityWindow",
    "read_audit",
    "read_dead_letters",
    "read_export",
    "read_velocity_items",
    "read_velocity_parquet",
    "route_of",
]


def read_dead_letters(directory: Path) -> list[tuple[str, DeadLetter]]:
    """``(file name, envelope)`` of every entry of a directory DLQ, oldest first."""
    if not directory.is_dir():
        return []
    return [
        (p.name, DeadLetter.from_json(p.read_text(encoding="utf-8")))
        for p in sorted(directory.glob("*.json"))
    ]


def read_audit(path: Path) -> tuple[Counter[str], int]:
    """How often each revision key (``<documentId>#<version>``) appears, and the number of lines."""
    keys: Counter[str] = Counter()
    lines = 0
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines += 1
                    keys[json.loads(line)["key"]] += 1
    return keys, lines


@dataclass
class ExportFiles:
    """The export's data files (``_``-prefixed folders are the export's own bookkeeping)."""

    files: list[Path] = field(default_factory=list)
    rows: Counter[str] = field(default_factory=Counter)
    partitions: Counter[str] = field(default_factory=Counter)
    bytes: int = 0

    @property
    def row_count(self) -> int:
        return sum(self.rows.values())


def read_export(directory: Path) -> ExportFiles:
    import pyarrow.parquet as pq

    out = ExportFiles()
    for path in sorted(directory.rglob("*.parquet")):
        relative = path.relative_to(directory)
        if any(part.startswith("_") for part in relative.parts):
            continue
        table = pq.read_table(path, columns=["document_id", "version"])
        docs, versions = table.column("document_id").to_pylist(), table.column("version").to_pylist()
        out.files.append(path)
        out.bytes += path.stat().st_size
        out.partitions[str(relative.parent)] += len(docs)
        out.rows.update(f"{d}#{v}" for d, v in zip(docs, versions, strict=True))
    return out


@dataclass
class ReadBack:
    """What the report shows besides the :class:`~qldbstream_tools.demo.checks.Observed` data."""

    dead_letter_files: list[str]
    audit_lines: int
    export: ExportFiles
    velocity_files: int
    #: shard -> its item in the checkpoint table
    checkpoint_items: dict[str, dict[str, Any]]
    #: (trigger, outcome) -> workflow executions
    executions: Counter[tuple[str, str]]
    sns_sample: list[str]


@dataclass(frozen=True)
class VelocityWindow:
    """One ``transaction_velocity`` result: a 1-minute window of ``Transactions`` inserts."""

    start_ms: int
    transactions: int
    unique_accounts: int
    total: Decimal
    revision: int
    final: bool

    @property
    def values(self) -> tuple[int, int, Decimal]:
        return (self.transactions, self.unique_accounts, self.total)


def read_velocity_parquet(directory: Path) -> tuple[dict[int, VelocityWindow], int]:
    """The windows written as Parquet (one file per window, rewritten per revision), and the files."""
    import pyarrow.parquet as pq

    windows: dict[int, VelocityWindow] = {}
    files = sorted(directory.rglob("*.parquet")) if directory.is_dir() else []
    for path in files:
        for row in pq.read_table(path).to_pylist():
            start = int(row["window_start"].timestamp() * 1000)
            windows[start] = VelocityWindow(
                start,
                int(row["transaction_count"]),
                int(row["unique_accounts"]),
                Decimal(row["total_amount"]).normalize(),
                int(row["revision"]),
                bool(row["final"]),
            )
    return windows, len(files)


def read_velocity_items(items: list[dict[str, Any]]) -> dict[int, VelocityWindow]:
    """The same windows from the DynamoDB results table."""
    out: dict[int, VelocityWindow] = {}
    for item in items:
        values = item["values"]["M"]
        start = int(item["window_start_ms"]["N"])
        out[start] = VelocityWindow(
            start,
            int(values["transaction_count"]["N"]),
            int(values["unique_accounts"]["N"]),
            Decimal(values["total_amount"]["N"]).normalize(),
            int(item["revision"]["N"]),
            bool(item["final"]["BOOL"]),
        )
    return out


def route_of(execution: Execution) -> str:
    """Which way the example workflow went, by the states it entered."""
    entered = execution.states_entered()
    for state, label in (
        ("ProcessHighValue", "high value: risk + notify"),
        ("BlockTransaction", "fraud: blocked + SNS"),
        ("InvestigateFraud", "fraud: investigated, cleared"),
        ("ComplianceCheck", "compliance: checked + recorded"),
    ):
        if state in entered:
            return label
    return "standard processing"


class RouteRecorder:
    """Wraps a local workflow interpreter's ``run`` to count executions by route and status."""

    def __init__(self, interpreter: Interpreter) -> None:
        self._run: Callable[..., Execution] = interpreter.run
        self.routes: Counter[tuple[str, str]] = Counter()
        #: route -> execution names (``<documentId>-<version>`` or ``alert-<id>``)
        self.names: dict[str, set[str]] = {}
        interpreter.run = self  # type: ignore[method-assign]

    def __call__(self, data: Any, *, name: str = "execution") -> Execution:
        execution = self._run(data, name=name)
        route = route_of(execution)
        self.routes[(route, execution.status.lower())] += 1
        self.names.setdefault(route, set()).add(name)
        return execution


class BatchRecorder:
    """Wraps a pipeline's ``process`` to add up its :class:`~qldbstream.pipeline.batch.BatchResult`:
    records delivered per handler, duplicates skipped, late revisions, dead letters, halts."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._process: Callable[..., BatchResult] = pipeline.process
        self.batches = 0
        self.delivered: Counter[str] = Counter()
        self.duplicates = 0
        self.late = 0
        self.dead_lettered = 0
        self.halts: list[str] = []
        pipeline.process = self  # type: ignore[method-assign]

    def __call__(self, shard_id: str | None, records: Sequence[KinesisRecord], **kwargs: Any) -> BatchResult:
        result = self._process(shard_id, records, **kwargs)
        self.batches += 1
        self.delivered.update(result.delivered)
        self.duplicates += result.duplicates
        self.late += result.late
        self.dead_lettered += result.dead_lettered
        if result.halted:
            self.halts.append(result.halt_reason)
        return result
