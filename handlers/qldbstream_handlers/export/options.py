"""What an export writes: the time range, tables, format, compression, partitioning.

Settings (``QLDBSTREAM_HANDLER_EXPORT__<KEY>`` or ``[handlers.export]``; all strings):

================  ===================================================  =====================
``to``            destination: a directory or ``s3://bucket/prefix``   (required)
``errors``        error destination (default ``<to>/_errors``)
``from``          inclusive start, ISO 8601 with a zone (``txTime``)   open
``until``         exclusive end, ISO 8601 with a zone (``txTime``)     open
``tables``        comma-separated table names                          every table
``format``        ``parquet`` or ``jsonl``                              ``parquet``
``compression``   parquet: snappy, gzip, zstd, none; jsonl: gzip, none  snappy / gzip
``partition``     partition pattern (see :mod:`.layout`)               ``year=YYYY/``
``json``          ``true``: also fill ``data_json``                     ``true``
``endpoint_url``  S3 endpoint (local stacks)
``region``        AWS region
================  ===================================================  =====================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from qldbstream.api import ConfigurationError
from qldbstream_handlers.export.layout import Format, partition_function

__all__ = ["ExportOptions", "parse_time"]

_KEYS = frozenset(
    {"to", "errors", "from", "until", "tables", "format", "compression", "partition", "json"}
    | {"endpoint_url", "region"}
)


def parse_time(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"{what} {text!r} is not an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise ConfigurationError(f"{what} {text!r} needs a time zone, e.g. 2024-01-01T00:00:00Z")
    return when


@dataclass(frozen=True)
class ExportOptions:
    """The bounds are on the revision's ``txTime`` (commit time): ``start <= txTime < end``."""

    start: datetime | None = None
    end: datetime | None = None
    tables: frozenset[str] | None = None
    format: str = "parquet"
    compression: str | None = None
    partition: str = "year=YYYY/"
    json_column: bool = True

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ConfigurationError(f"export: {name} needs a time zone")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigurationError("export: the end (until) must be after the start (from)")
        partition_function(self.partition)
        self.file_format()

    def file_format(self) -> Format:
        return Format(self.format, self.compression)

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> tuple[ExportOptions, dict[str, str]]:
        """The options and the destination settings (``to``, ``errors``, ``endpoint_url``, ``region``)."""
        own = {k.lower(): str(v).strip() for k, v in settings.items()}
        unknown = set(own) - _KEYS
        if unknown:
            raise ConfigurationError(
                f"export: unknown settings {sorted(unknown)} (known: {', '.join(sorted(_KEYS))})"
            )
        for key in ("to", "errors"):
            target = own.get(key, "")
            if (key == "to" and not target) or ("://" in target and not target.startswith("s3://")):
                raise ConfigurationError(
                    f"export: {key} must be a directory or s3://bucket/prefix, not {target!r}"
                )
        flag = own.get("json", "true").lower()
        if flag not in ("true", "false"):
            raise ConfigurationError(f"export: json must be true or false, not {flag!r}")
        tables = frozenset(t.strip() for t in own.get("tables", "").split(",") if t.strip())
        options = cls(
            start=parse_time(own["from"], "export: from") if own.get("from") else None,
            end=parse_time(own["until"], "export: until") if own.get("until") else None,
            tables=tables or None,
            format=own.get("format") or "parquet",
            compression=own.get("compression") or None,
            partition=own.get("partition") or "year=YYYY/",
            json_column=flag == "true",
        )
        where = {k: own[k] for k in ("to", "errors", "endpoint_url", "region") if own.get(k)}
        return options, where
