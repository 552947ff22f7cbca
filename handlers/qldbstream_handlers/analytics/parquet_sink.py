"""Window results as Parquet files (pyarrow), one file per window, rewritten in place.

Layout under the destination (a directory or ``s3://bucket/prefix``)::

    <query>/date=YYYY-MM-DD/<start>_<end>.parquet              tumbling and hopping: every group
    <query>/date=YYYY-MM-DD/<start>_<end>_<group hash>.parquet  session windows: one group
    (``_<shard>`` before ``.parquet`` in scope = shard)

The name is a function of the window alone, so every new revision *replaces* the file (atomically:
S3 ``PutObject``, or a local rename) - a redelivery or a correction never adds a second row for a
window. A retracted session window's file is deleted.

Columns: ``query`` string, ``shard`` string, ``group`` string, ``window_start`` and ``window_end``
timestamp[ms, UTC], ``revision`` int64, ``final`` bool, then one column per aggregate: ``count``
and ``count_distinct`` int64, the others decimal128(38, ``scale``) (default scale 6; an average is
rounded half-even to it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

from qldbstream_handlers.analytics.aggregates import Aggregate
from qldbstream_handlers.analytics.results import Pane, Retraction
from qldbstream_handlers.analytics.sinks import iso_ms

if TYPE_CHECKING:
    import pyarrow as pa

    from qldbstream_handlers.export.storage import Storage

__all__ = ["ParquetSink", "pane_path"]


def pane_path(query: str, start: int, end: int, group: str | None, session: bool, shard: str | None) -> str:
    day = iso_ms(start)[:10]
    stamp = f"{iso_ms(start)}_{iso_ms(end)}".replace(":", "").replace("-", "")
    name = stamp
    if session:
        name += "_" + hashlib.sha256(repr(group).encode()).hexdigest()[:16]
    if shard:
        name += f"_{shard}"
    return f"{query}/date={day}/{name}.parquet"


class ParquetSink:
    name = "parquet"

    def __init__(
        self,
        storage: Storage,
        aggregates: dict[str, tuple[Aggregate, ...]],
        *,
        compression: str = "snappy",
        scale: int = 6,
    ) -> None:
        self.storage = storage
        self.aggregates = aggregates
        self.compression = compression
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def schema(self, query: str) -> pa.Schema:
        import pyarrow as pa

        fields: list[pa.Field[Any]] = [
            pa.field("query", pa.string(), nullable=False),
            pa.field("shard", pa.string()),
            pa.field("group", pa.string()),
            pa.field("window_start", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("window_end", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("revision", pa.int64(), nullable=False),
            pa.field("final", pa.bool_(), nullable=False),
        ]
        for agg in self.aggregates[query]:
            kind = pa.decimal128(38, self.scale) if agg.kind.numeric else pa.int64()
            fields.append(pa.field(agg.name, kind))
        return pa.schema(fields)

    def _decimal(self, value: Any) -> Decimal | None:
        return None if value is None else Decimal(value).quantize(self._quantum, rounding=ROUND_HALF_EVEN)

    def table(self, pane: Pane) -> pa.Table:
        import pyarrow as pa

        aggs = self.aggregates[pane.query]
        columns: dict[str, list[Any]] = {
            "query": [r.query for r in pane.rows],
            "shard": [r.shard for r in pane.rows],
            "group": [r.group for r in pane.rows],
            "window_start": [r.window_start for r in pane.rows],
            "window_end": [r.window_end for r in pane.rows],
            "revision": [r.revision for r in pane.rows],
            "final": [r.final for r in pane.rows],
        }
        for agg in aggs:
            raw = [r.values[agg.name] for r in pane.rows]
            columns[agg.name] = [self._decimal(v) for v in raw] if agg.kind.numeric else raw
        return pa.table(columns, schema=self.schema(pane.query))

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        import pyarrow.parquet as pq

        for r in retractions:
            self.storage.delete(pane_path(r.query, r.window_start, r.window_end, r.group, True, r.shard))
        for pane in panes:
            group = pane.rows[0].group if pane.session else None
            path = pane_path(pane.query, pane.window_start, pane.window_end, group, pane.session, pane.shard)
            buffer = io.BytesIO()
            pq.write_table(self.table(pane), buffer, compression=self.compression)  # type: ignore[arg-type]
            self.storage.put(path, buffer.getvalue())

    def close(self) -> None:
        pass
