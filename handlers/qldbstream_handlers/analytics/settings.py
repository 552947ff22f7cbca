"""The analytics handler's settings (``QLDBSTREAM_HANDLER_ANALYTICS__<KEY>`` or ``[handlers.analytics]``).

One declarative query per handler instance (the Python API takes any number). Every value is a
string; a bad one is a :class:`~qldbstream.core.errors.ConfigurationError` at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from qldbstream.api import ConfigurationError
from qldbstream_handlers.analytics.aggregates import parse_aggregates
from qldbstream_handlers.analytics.query import OPERATIONS, TRANSACTION_VELOCITY, Query, parse_where
from qldbstream_handlers.analytics.windows import Duration, duration_ms, parse_window

__all__ = ["PRESETS", "SINKS", "AnalyticsConfig", "AnalyticsOptions", "parse_settings"]

PRESETS = {"transaction_velocity": TRANSACTION_VELOCITY}
SINKS = frozenset({"emf", "dynamodb", "parquet"})
_QUERY_KEYS = frozenset(
    {"preset", "name", "tables", "table", "operations", "window", "group_by", "aggregates", "where"}
    | {"allowed_lateness", "out_of_orderness"}
)
_OTHER_KEYS = frozenset(
    {
        "watermark",
        "min_shards",
        "scope",
        "keep_closed",
        "sinks",
        "emf_path",
        "emf_namespace",
        "dynamodb_table",
    }
    | {"parquet_path", "parquet_compression", "decimal_scale", "state", "region", "endpoint_url"}
)


@dataclass(frozen=True)
class AnalyticsOptions:
    """How windows close across shards, and where state is kept (see the engine's docstring)."""

    #: ``shards``: the slowest shard read holds the watermark back; ``global``: the newest event anywhere.
    watermark: str = "shards"
    #: No window fires before this many shards have delivered records ("shards" mode).
    min_shards: int = 1
    #: ``stream``: one set of windows for all shards (one consumer process); ``shard``: windows per
    #: shard, united through the state store (several consumers: Lambda, several KCL workers);
    #: ``auto``: ``shard`` in AWS Lambda (``AWS_LAMBDA_FUNCTION_NAME`` is set), else ``stream``.
    scope: str = "auto"
    #: how long (event time, behind the newest event) a purged window stays in the state store to be
    #: reopened by a late event (a day: Kinesis's default retention - nothing older can be read)
    keep_closed: Duration = "1d"

    def __post_init__(self) -> None:
        if self.watermark not in ("shards", "global"):
            raise ConfigurationError(f"analytics: watermark must be shards or global, not {self.watermark!r}")
        if self.scope not in ("stream", "shard", "auto"):
            raise ConfigurationError(f"analytics: scope must be stream, shard or auto, not {self.scope!r}")
        if self.min_shards < 1:
            raise ConfigurationError("analytics: min_shards must be at least 1")
        object.__setattr__(self, "keep_closed", duration_ms(self.keep_closed, "analytics: keep_closed"))

    @property
    def keep_closed_ms(self) -> int:
        return duration_ms(self.keep_closed)

    def resolved_scope(self) -> str:
        """``stream`` or ``shard`` (``auto`` decided by the runtime's environment)."""
        if self.scope != "auto":
            return self.scope
        return "shard" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "stream"


@dataclass(frozen=True)
class AnalyticsConfig:
    query: Query
    options: AnalyticsOptions
    sinks: tuple[str, ...]
    emf_path: str = "-"
    emf_namespace: str = "qldbstream/analytics"
    dynamodb_table: str | None = None
    parquet_path: str | None = None
    parquet_compression: str = "snappy"
    decimal_scale: int = 6
    #: ``memory`` or ``dynamodb:<table>``
    state: str = "memory"
    region: str | None = None
    endpoint_url: str | None = None


def _names(text: str) -> frozenset[str]:
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def _int(own: Mapping[str, str], key: str, default: int) -> int:
    text = own.get(key, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"analytics: {key} must be a whole number, not {text!r}") from None


def _query(own: Mapping[str, str]) -> Query:
    preset_name = own.get("preset", "").strip()
    if preset_name:
        if preset_name not in PRESETS:
            raise ConfigurationError(
                f"analytics: unknown preset {preset_name!r} (known: {', '.join(PRESETS)})"
            )
        base: Query | None = PRESETS[preset_name]
    else:
        base = None
        missing = [k for k in ("window", "aggregates") if not own.get(k, "").strip()]
        if missing:
            raise ConfigurationError(
                f"analytics: set {' and '.join(missing)} (or preset = transaction_velocity)"
            )
    tables_text = own.get("tables", own.get("table", "")).strip()
    where_text = own.get("where", "").strip()
    fields: dict[str, object] = {}
    if own.get("name", "").strip():
        fields["name"] = own["name"].strip()
    if own.get("window", "").strip():
        fields["window"] = parse_window(own["window"])
    if own.get("aggregates", "").strip():
        fields["aggregates"] = parse_aggregates(own["aggregates"])
    if tables_text:
        fields["tables"] = None if tables_text == "*" else _names(tables_text)
    if own.get("operations", "").strip():
        fields["operations"] = _names(own["operations"])
    if own.get("group_by", "").strip():
        fields["group_by"] = own["group_by"].strip()
    if where_text:
        fields["where"], fields["where_text"] = parse_where(where_text), where_text
    for key in ("allowed_lateness", "out_of_orderness"):
        if own.get(key, "").strip():
            fields[key] = own[key].strip()
    if base is not None:
        return replace(base, **fields)  # type: ignore[arg-type]
    fields.setdefault("name", "analytics")
    fields.setdefault("operations", OPERATIONS)
    return Query(**fields)  # type: ignore[arg-type]


def parse_settings(settings: Mapping[str, str]) -> AnalyticsConfig:
    own = {k.lower(): str(v) for k, v in settings.items()}
    unknown = set(own) - _QUERY_KEYS - _OTHER_KEYS
    if unknown:
        raise ConfigurationError(f"analytics: unknown settings {sorted(unknown)}")
    query = _query(own)
    options = AnalyticsOptions(
        own.get("watermark", "shards").strip().lower() or "shards",
        _int(own, "min_shards", 1),
        own.get("scope", "auto").strip().lower() or "auto",
        own.get("keep_closed", "1d").strip() or "1d",
    )
    sinks = tuple(sorted(_names(own.get("sinks", "emf").lower()) - {"none"}))
    bad = set(sinks) - SINKS
    if bad:
        raise ConfigurationError(
            f"analytics: unknown sinks {sorted(bad)} (known: emf, dynamodb, parquet, none)"
        )
    config = AnalyticsConfig(
        query,
        options,
        sinks,
        emf_path=own.get("emf_path", "-").strip() or "-",
        emf_namespace=own.get("emf_namespace", "qldbstream/analytics").strip() or "qldbstream/analytics",
        dynamodb_table=own.get("dynamodb_table", "").strip() or None,
        parquet_path=own.get("parquet_path", "").strip() or None,
        parquet_compression=own.get("parquet_compression", "snappy").strip().lower() or "snappy",
        decimal_scale=_int(own, "decimal_scale", 6),
        state=own.get("state", "memory").strip() or "memory",
        region=own.get("region", "").strip() or None,
        endpoint_url=own.get("endpoint_url", "").strip() or None,
    )
    if "dynamodb" in sinks and not config.dynamodb_table:
        raise ConfigurationError("analytics: the dynamodb sink needs dynamodb_table")
    if "parquet" in sinks and not config.parquet_path:
        raise ConfigurationError(
            "analytics: the parquet sink needs parquet_path (a directory or s3://bucket/prefix)"
        )
    if config.parquet_compression not in ("snappy", "gzip", "zstd", "none"):
        raise ConfigurationError("analytics: parquet_compression must be snappy, gzip, zstd or none")
    if not 0 <= config.decimal_scale <= 18:
        raise ConfigurationError("analytics: decimal_scale must be between 0 and 18")
    if config.state != "memory" and not (config.state.startswith("dynamodb:") and config.state[9:]):
        raise ConfigurationError(f"analytics: state must be memory or dynamodb:<table>, not {config.state!r}")
    return config
