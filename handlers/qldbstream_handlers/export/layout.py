"""Where a row goes and how a file is encoded: partition patterns, file names, Parquet and JSON Lines.

A partition pattern is a path with the tokens ``YYYY``, ``MM``, ``DD``, ``HH`` (the revision's
``txTime``, UTC) and ``TABLE``: ``year=YYYY/`` (the default, the seed's layout),
``year=YYYY/month=MM/``, ``table=TABLE/date=YYYY-MM-DD/``. A data file is named after the shard
whose batch flushed it, the lowest position (sequence, sub-sequence number) among the flush's rows
and a digest of the revisions the flush holds::

    year=2024/month=03/shardId-000000000001-49650...952-00003-5c1f0e9a2b.parquet

so a flush that is repeated (a retried ``flush``) writes the same names again, and two different
flushes never write the same name (see :mod:`.manifest`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from qldbstream.api import ConfigurationError
from qldbstream_handlers.export.schema import Position, arrow_schema

__all__ = ["FORMATS", "Format", "file_name", "flush_stem", "partition_function"]

FORMATS = {"parquet": ("snappy", "gzip", "zstd", "none"), "jsonl": ("gzip", "none")}
_PATTERN = re.compile(r"^(?:[A-Za-z0-9=_.-]+/)+$")


def partition_function(pattern: str) -> Callable[[datetime, str], str]:
    """The partition path (``year=2024/``) of a row with this ``txTime`` and table."""
    if (
        not _PATTERN.match(pattern)
        or "/../" in f"/{pattern}"
        or ("TABLE" not in pattern and not any(token in pattern for token in ("YYYY", "MM", "DD", "HH")))
    ):
        raise ConfigurationError(
            f"partition {pattern!r}: a path ending in '/' with YYYY, MM, DD, HH or TABLE, "
            "e.g. year=YYYY/month=MM/"
        )

    def partition(when: datetime, table: str) -> str:
        return (
            pattern.replace("YYYY", f"{when.year:04d}")
            .replace("MM", f"{when.month:02d}")
            .replace("DD", f"{when.day:02d}")
            .replace("HH", f"{when.hour:02d}")
            .replace("TABLE", table)
        )

    return partition


def file_name(stem: str, extension: str) -> str:
    return f"{stem}.{extension}"


def flush_stem(shard: str, first: Position, keys: Iterable[tuple[str, int]]) -> str:
    """A flush's file stem: the shard whose batch flushed, the lowest position among its rows, and
    a digest of the revisions it holds - the same flush gets the same name, another flush another."""
    digest = hashlib.sha256("\n".join(f"{d}#{v}" for d, v in sorted(keys)).encode()).hexdigest()
    return f"{shard}-{first[0]}-{first[1]:05d}-{digest[:10]}"


class Format:
    """Encoding of data files: ``parquet`` (pyarrow, compression per column chunk) or ``jsonl``."""

    def __init__(self, name: str = "parquet", compression: str | None = None) -> None:
        if name not in FORMATS:
            raise ConfigurationError(f"format {name!r}: parquet or jsonl")
        compression = compression or FORMATS[name][0]
        if compression not in FORMATS[name]:
            raise ConfigurationError(
                f"compression {compression!r} for {name}: one of {', '.join(FORMATS[name])}"
            )
        self.name = name
        self.compression = compression

    @property
    def extension(self) -> str:
        if self.name == "parquet":
            return "parquet"
        return "jsonl.gz" if self.compression == "gzip" else "jsonl"

    def encode(self, rows: Sequence[dict[str, Any]]) -> bytes:
        if self.name == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            buffer = io.BytesIO()
            table = pa.Table.from_pylist(list(rows), schema=arrow_schema())
            pq.write_table(table, buffer, compression=self.compression)  # type: ignore[arg-type]
            return buffer.getvalue()
        text = "".join(json.dumps(_json_row(r), sort_keys=True) + "\n" for r in rows).encode()
        return gzip.compress(text, mtime=0) if self.compression == "gzip" else text

    def decode(self, blob: bytes) -> list[dict[str, Any]]:
        """The rows of a file this format wrote (the JSON form keeps binary columns as base64)."""
        if self.name == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(blob)).to_pylist()
        if self.compression == "gzip":
            blob = gzip.decompress(blob)
        return [json.loads(line) for line in blob.decode().splitlines() if line]


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["tx_time"] = row["tx_time"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for key in ("data_hash", "revision_hash"):
        out[key] = None if row[key] is None else base64.b64encode(row[key]).decode("ascii")
    return out
