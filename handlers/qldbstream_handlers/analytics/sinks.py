"""Where window results go: the sink interface and the CloudWatch EMF sink.

A sink gets, in ``flush``, the panes and retractions emitted since the last flush (a later
emission of the same window replaces an earlier one). It must be idempotent by result key: a
crash after a sink write but before the checkpoint replays the records, and the engine emits the
same results again.

* :class:`EmfSink` - one CloudWatch embedded-metric-format JSON line per updated result, on
  standard output (Lambda, containers) or appended to a file. **At least once**: a replay prints
  a line again; each line carries ``ResultKey`` and ``Revision`` so a Logs Insights query can keep
  the latest revision per key, but CloudWatch itself adds both values. Metric timestamps are the
  window start: CloudWatch rejects data points older than two weeks, so EMF suits live streams,
  not historical replays.
* :class:`~.dynamodb_sink.DynamoDBSink` and :class:`~.parquet_sink.ParquetSink` - exactly once per
  key (conditional overwrite by revision; deterministic file names).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Protocol

from qldbstream_handlers.analytics.aggregates import Aggregate, Kind, Value
from qldbstream_handlers.analytics.results import Pane, Retraction

__all__ = ["EmfSink", "ResultSink", "iso_ms", "unit_of"]


class ResultSink(Protocol):
    name: str

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        """Persist (idempotently) before returning; raise to keep the checkpoint where it is."""
        ...

    def close(self) -> None: ...


def iso_ms(ms: int) -> str:
    """``2024-03-01T09:01:00.000Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def unit_of(kind: Kind) -> str:
    """The CloudWatch unit of an aggregate: counts are ``Count``, the rest carry the field's unit."""
    return "None" if kind.numeric else "Count"


def _number(value: Value) -> int | float | None:
    if value is None or isinstance(value, int):
        return value
    return float(value) if isinstance(value, Decimal) else value


class EmfSink:
    """CloudWatch embedded metric format lines (``path`` ``-``: standard output)."""

    name = "emf"

    def __init__(
        self,
        aggregates: dict[str, tuple[Aggregate, ...]],
        group_names: dict[str, str | None],
        *,
        namespace: str = "qldbstream/analytics",
        path: str = "-",
        out: IO[str] | None = None,
    ) -> None:
        #: query -> its aggregates (metric names and units) and its group_by field (the dimension)
        self.aggregates = aggregates
        self.group_names = group_names
        self.namespace = namespace
        self.path = path
        self._out = out

    def lines(self, panes: Sequence[Pane]) -> list[str]:
        """The EMF documents for ``panes`` (one per updated row), as JSON lines."""
        out: list[str] = []
        for pane in panes:
            aggs = self.aggregates[pane.query]
            group_name = self.group_names.get(pane.query)
            for row in pane.rows:
                if row.group not in pane.updated:
                    continue
                dims = ["Query"] + ([group_name] if group_name else [])
                doc: dict[str, object] = {
                    "_aws": {
                        "Timestamp": row.window_start,
                        "CloudWatchMetrics": [
                            {
                                "Namespace": self.namespace,
                                "Dimensions": [dims],
                                "Metrics": [
                                    {"Name": a.name, "Unit": unit_of(a.kind)}
                                    for a in aggs
                                    if row.values[a.name] is not None
                                ],
                            }
                        ],
                    },
                    "Query": row.query,
                    "WindowStart": iso_ms(row.window_start),
                    "WindowEnd": iso_ms(row.window_end),
                    "Revision": row.revision,
                    "Final": row.final,
                    "ResultKey": row.key,
                }
                if group_name:
                    doc[group_name] = "null" if row.group is None else row.group
                if row.shard:
                    doc["Shard"] = row.shard
                for a in aggs:
                    value = _number(row.values[a.name])
                    if value is not None:
                        doc[a.name] = value
                out.append(json.dumps(doc, separators=(",", ":")))
        return out

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        lines = self.lines(panes)
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        if self._out is not None:
            self._out.write(text)
            self._out.flush()
        elif self.path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        pass
