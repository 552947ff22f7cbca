"""Configuration: read once at start-up from the environment (``QLDBSTREAM_…``) and/or a file,
validated, frozen. A bad value or an unknown setting is one clear error at start-up.

Sources, later ones winning: defaults → a TOML or JSON file (``QLDBSTREAM_CONFIG`` or
``--config``) → environment variables. In a file, keys are the setting names
(``late_policy = "deliver-late"``) and each handler's own settings sit in a
``[handlers.<name>]`` table. In the environment, a setting is ``QLDBSTREAM_<NAME>`` and a
handler setting ``QLDBSTREAM_HANDLER_<HANDLER>__<KEY>`` (double underscore), e.g.
``QLDBSTREAM_HANDLER_FRAUD__THRESHOLD=10000``.

Secrets (any setting whose name contains ``secret``, ``password``, ``token`` or ``key``) are
masked when the configuration is printed.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from qldbstream.core.dedupe import LatePolicy
from qldbstream.core.errors import ConfigurationError
from qldbstream.core.gate import Delivery
from qldbstream.pipeline.batch import PipelineSettings, VerificationAction
from qldbstream.pipeline.reliability import RetryPolicy

__all__ = ["Settings", "load_settings"]

PREFIX = "QLDBSTREAM_"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SECRET_WORDS = ("secret", "password", "token", "key")


@dataclass(frozen=True)
class Settings:
    """Every setting, with its default. Names map to ``QLDBSTREAM_<NAME upper-cased>``."""

    #: handler plugins to activate: entry-point names or ``module:attribute`` paths
    handlers: tuple[str, ...] = ()
    #: the Kinesis data stream (standalone worker, KCL, verify --stream)
    stream_name: str | None = None
    region: str | None = None
    #: one endpoint for every AWS service (local stacks); per-service ones below win
    endpoint_url: str | None = None
    kinesis_endpoint_url: str | None = None
    dynamodb_endpoint_url: str | None = None
    sqs_endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    #: attempts per AWS API call in botocore (standard retry mode, counting the first call);
    #: qldbstream's own retry loops (Kinesis throttling, handler retries) sit on top of it
    aws_max_attempts: int = 3
    #: ``sqs:<queue url>`` (or the https queue URL) or ``dir:<path>``; empty: no DLQ (poison halts)
    dlq: str | None = None
    #: an SQS DLQ's S3 bucket (``BUCKET`` or ``BUCKET/PREFIX``) for envelopes over 256 KiB: the
    #: message then points to the object (the SQS extended client's pattern). Without it, such a
    #: dead letter that cannot be shortened without losing the record halts its shard
    dlq_payload_bucket: str | None = None
    #: ``memory`` or ``dynamodb:<table>``
    dedupe_store: str = "memory"
    dedupe_ttl_seconds: int = 7 * 24 * 3600
    #: DynamoDB table for the standalone worker's checkpoints
    checkpoint_table: str = "qldbstream-checkpoints"
    application_name: str = "qldbstream"
    #: a revision older than one already delivered: ``deliver-late`` (with ``ctx.late``; the
    #: default), ``reorder`` (held briefly for the versions before it) or ``drop``
    late_policy: LatePolicy = LatePolicy.DELIVER_LATE
    reorder_window_seconds: float = 30.0
    #: ``verified`` (every check that covers a record passed) or ``chain-confirmed`` (and the next
    #: block's link confirmed its block); see docs/delivery.md
    delivery: Delivery = Delivery.VERIFIED
    #: where block verdicts and records waiting for their block summary live: ``memory`` (one
    #: process: the standalone worker) or ``dynamodb:<table>`` (Lambda and the KCL, where a block
    #: summary and its revisions may be read by different processes)
    gate_store: str = "memory"
    #: seconds a record may wait for its block summary (or the confirming link) before it is
    #: dead-lettered as unverifiable
    gate_max_wait_seconds: float = 600.0
    #: records waiting in memory at most (beyond: the shard pauses and is read again later)
    gate_max_parked: int = 100_000
    #: the standalone worker's delivery order: ``journal`` (block after block, merged over every
    #: shard) or ``shard`` (each shard in sequence order). Lambda and the KCL deliver in shard order.
    order: str = "journal"
    #: journal order: seconds a block waits for its predecessor before the gap is given up
    order_gap_seconds: float = 30.0
    #: chain-confirmed: saved GetBlock outputs with proofs (and a GetDigest output), comma-separated
    #: paths; the blocks they prove are confirmed without a successor (qldbstream.io.anchors)
    chain_anchors: tuple[str, ...] = ()
    verification_action: VerificationAction = VerificationAction.DEAD_LETTER
    stop_on_first_failure: bool = True
    retry_max_attempts: int = 5
    retry_base_delay_ms: int = 100
    retry_max_delay_ms: int = 60_000
    retry_multiplier: float = 2.0
    breaker_failures: int = 5
    breaker_recovery_seconds: float = 60.0
    breaker_half_open_trials: int = 3
    batch_min: int = 10
    batch_max: int = 500
    batch_target_ms: int = 100
    #: ``TRIM_HORIZON``, ``LATEST`` or ``AT_TIMESTAMP`` (then ``start_time``)
    start_position: str = "TRIM_HORIZON"
    start_time: datetime | None = None
    #: bounded export: stop at this time (exclusive) or at CONTROL COMPLETED
    end_time: datetime | None = None
    #: ``none``, ``emf`` (CloudWatch embedded metrics on stdout) or ``prometheus:<port>``
    metrics: str = "none"
    #: the CloudWatch namespace of the EMF metrics
    metrics_namespace: str = "qldbstream"
    #: dimensions added to every EMF metric, comma-separated ``Name=Value`` pairs
    #: (``function=orders-consumer,stream=orders``)
    metrics_dimensions: tuple[str, ...] = ()
    #: unset, Lambda's ``AWS_LAMBDA_LOG_LEVEL`` (the function's log-level setting) when it is set
    log_level: str = "INFO"
    #: ``json`` (structured, on stderr), ``text``, or ``inherit``: qldbstream adds no handler and
    #: its records propagate to the application's logging (a Powertools Logger, the root logger)
    log_format: str = "json"
    #: mask sensitive fields before handlers, the DLQ and logs see them (docs/handlers/masking.md)
    masking: bool = False
    #: the seed's JSON rules or ``ssn|social_security=HASH; credit_card|card_number=PARTIAL:4``;
    #: empty: the seed's rules
    masking_rules: str | None = None
    #: the HMAC-SHA-256 key of HASH rules (a secret; at least 16 bytes)
    masking_hash_key: str | None = None
    #: base64 of 32 random bytes: seals dead letters' raw bytes with AES-256-GCM (a secret)
    masking_dlq_key: str | None = None
    #: or a KMS key (id, ARN or alias) for envelope encryption of dead letters
    masking_dlq_kms_key_id: str | None = None
    handler_settings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(
            stop_on_first_failure=self.stop_on_first_failure,
            verification_action=self.verification_action,
            late_policy=self.late_policy,
            reorder_window=self.reorder_window_seconds,
            delivery=self.delivery,
            max_wait=self.gate_max_wait_seconds,
            max_parked=self.gate_max_parked,
            gap_timeout=self.order_gap_seconds,
            retry=RetryPolicy(
                self.retry_max_attempts,
                self.retry_base_delay_ms / 1000,
                self.retry_max_delay_ms / 1000,
                self.retry_multiplier,
            ),
            breaker_failures=self.breaker_failures,
            breaker_recovery=self.breaker_recovery_seconds,
            breaker_trials=self.breaker_half_open_trials,
        )

    def endpoint(self, service: str) -> str | None:
        return getattr(self, f"{service}_endpoint_url", None) or self.endpoint_url

    def masked(self) -> dict[str, Any]:
        """The effective configuration, printable: secrets replaced by ``****``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "handler_settings":
                value = {h: {k: _mask(k, v) for k, v in kv.items()} for h, kv in value.items()}
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            elif value is not None and not isinstance(value, int | float | bool):
                value = _mask(f.name, str(value))
            out[f.name] = value
        return out


def _mask(name: str, value: str) -> str:
    return "****" if any(w in name.lower() for w in _SECRET_WORDS) and value else value


#: Lambda's log levels that are not Python's
_LAMBDA_LEVELS = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}

_FIELDS = {f.name: f for f in fields(Settings) if f.name != "handler_settings"}


def _convert(name: str, raw: Any, source: str) -> Any:
    """Turn a raw value (env string or file value) into the field's type, or fail clearly."""
    default = Settings.__dataclass_fields__[name].default
    annotation = str(Settings.__dataclass_fields__[name].type)
    where = f"{source}: {name}"
    try:
        if name in ("handlers", "chain_anchors", "metrics_dimensions"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(i.strip() for i in items if str(i).strip())
        if name == "late_policy":
            return LatePolicy(str(raw).strip().lower())
        if name == "delivery":
            return Delivery(str(raw).strip().lower())
        if name == "verification_action":
            return VerificationAction(str(raw).strip().lower())
        if annotation.startswith("datetime"):
            if raw in (None, ""):
                return None
            text = raw if isinstance(raw, str) else raw.isoformat()
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("needs a time zone, e.g. 2024-01-01T00:00:00Z")
            return when
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int | float):
            number = (int if isinstance(default, int) else float)(raw)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        return None if raw in (None, "") else str(raw)
    except (ValueError, TypeError) as exc:
        choices = getattr(type(default), "__members__", None)  # an enum setting: say its values
        hint = f"; one of: {', '.join(m.value for m in choices.values())}" if choices else ""
        raise ConfigurationError(f"{where}: invalid value {raw!r} ({exc}{hint})") from None


def _from_file(path: str) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"configuration file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            f"configuration file {path}: not valid {p.suffix[1:] or 'TOML'} ({exc})"
        ) from None
    handlers = data.pop("handlers", None)
    names: Any = ()
    hsettings: dict[str, dict[str, str]] = {}
    if isinstance(handlers, dict):  # [handlers] table: names under "active", settings per handler
        names = handlers.pop("active", ())
        for h, kv in handlers.items():
            if not isinstance(kv, dict):
                raise ConfigurationError(f"configuration file {path}: [handlers.{h}] must be a table")
            hsettings[h] = {str(k): str(v) for k, v in kv.items()}
    elif handlers is not None:
        names = handlers
    values = {"handlers": names} if names else {}
    for key, value in data.items():
        name = key.replace("-", "_").lower()
        if name not in _FIELDS:
            raise ConfigurationError(f"configuration file {path}: unknown setting {key!r}")
        values[name] = value
    return values, hsettings


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | None = None) -> Settings:
    """Build the settings from a file (if any) and the environment; raise ConfigurationError."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    hsettings: dict[str, dict[str, str]] = {}
    path = config_file or env.get(PREFIX + "CONFIG")
    if path:
        file_values, hsettings = _from_file(path)
        raw.update(file_values)
        sources.update(dict.fromkeys(file_values, f"configuration file {path}"))
    for key, value in env.items():
        if not key.startswith(PREFIX) or key == PREFIX + "CONFIG":
            continue
        rest = key[len(PREFIX) :]
        if rest.startswith("HANDLER_") and "__" in rest:
            handler, _, setting = rest[len("HANDLER_") :].partition("__")
            hsettings.setdefault(handler.lower().replace("_", "-"), {})[setting.lower()] = value
            continue
        name = rest.lower()
        if name not in _FIELDS:
            raise ConfigurationError(f"unknown setting {key} (see 'qldbstream config --help' for the list)")
        raw[name] = value
        sources[name] = f"environment {key}"
    if "region" not in raw and env.get("AWS_REGION"):
        raw["region"] = env["AWS_REGION"]
    if "log_level" not in raw and env.get("AWS_LAMBDA_LOG_LEVEL"):  # Lambda's advanced logging controls
        level = env["AWS_LAMBDA_LOG_LEVEL"].strip().upper()
        raw["log_level"] = _LAMBDA_LEVELS.get(level, level)
        sources["log_level"] = "environment AWS_LAMBDA_LOG_LEVEL"
    values = {name: _convert(name, value, sources.get(name, "default")) for name, value in raw.items()}
    settings = Settings(**values, handler_settings=hsettings)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.start_position not in ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"):
        raise ConfigurationError(
            f"start_position: {s.start_position!r} is not TRIM_HORIZON, LATEST or AT_TIMESTAMP"
        )
    if s.start_position == "AT_TIMESTAMP" and s.start_time is None:
        raise ConfigurationError("start_position AT_TIMESTAMP needs start_time")
    if s.start_time and s.end_time and s.end_time <= s.start_time:
        raise ConfigurationError("end_time must be after start_time")
    if not 1 <= s.batch_min <= s.batch_max <= 10_000:
        raise ConfigurationError("batch sizes need 1 <= batch_min <= batch_max <= 10000")
    if s.retry_max_attempts < 1 or s.breaker_failures < 1 or s.breaker_half_open_trials < 1:
        raise ConfigurationError(
            "retry_max_attempts, breaker_failures and breaker_half_open_trials must be >= 1"
        )
    if s.retry_multiplier < 1:
        raise ConfigurationError("retry_multiplier must be >= 1")
    if not (s.gate_store == "memory" or s.gate_store.startswith("dynamodb:")):
        raise ConfigurationError(f"gate_store: {s.gate_store!r} is not 'memory' or 'dynamodb:<table>'")
    if s.order not in ("journal", "shard"):
        raise ConfigurationError(f"order: {s.order!r} is not journal or shard")
    if s.gate_max_wait_seconds <= 0:
        raise ConfigurationError("gate_max_wait_seconds must be positive")
    if not (s.dedupe_store == "memory" or s.dedupe_store.startswith("dynamodb:")):
        raise ConfigurationError(f"dedupe_store: {s.dedupe_store!r} is not 'memory' or 'dynamodb:<table>'")
    if s.dlq and not s.dlq.startswith(("sqs:", "dir:", "https://sqs", "http://")):
        raise ConfigurationError(f"dlq: {s.dlq!r} is not 'sqs:<queue url>' or 'dir:<path>'")
    if s.dlq_payload_bucket and not _BUCKET.fullmatch(s.dlq_payload_bucket.partition("/")[0]):
        raise ConfigurationError(
            f"dlq_payload_bucket: {s.dlq_payload_bucket!r} is not 'BUCKET' or 'BUCKET/PREFIX' "
            "(an S3 bucket name: 3-63 lower-case letters, digits, dots and hyphens)"
        )
    if s.aws_max_attempts < 1:
        raise ConfigurationError("aws_max_attempts must be >= 1 (1: botocore does not retry)")
    if not (s.metrics in ("none", "emf") or s.metrics.startswith("prometheus:")):
        raise ConfigurationError(f"metrics: {s.metrics!r} is not none, emf or prometheus:<port>")
    if s.log_format not in ("json", "text", "inherit"):
        raise ConfigurationError(f"log_format: {s.log_format!r} is not json, text or inherit")
    if not s.metrics_namespace.strip():
        raise ConfigurationError("metrics_namespace must not be empty")
    for pair in s.metrics_dimensions:
        name, sep, value = pair.partition("=")
        if not (sep and name.strip() and value.strip()):
            raise ConfigurationError(f"metrics_dimensions: {pair!r} is not Name=Value")
    if s.masking:
        from qldbstream.core.masking import DEFAULT_RULES, Masker, parse_rules

        rules = parse_rules(s.masking_rules) if s.masking_rules else DEFAULT_RULES
        Masker(rules, s.masking_hash_key)  # raises ConfigurationError (e.g. HASH rules without a key)
        if s.dlq and not (s.masking_dlq_key or s.masking_dlq_kms_key_id):
            raise ConfigurationError(
                "masking with a dead-letter queue needs masking_dlq_key or masking_dlq_kms_key_id "
                "(dead letters keep the raw bytes, sealed, so that replay can verify them)"
            )
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigurationError(f"log_level: {s.log_level!r} is not a logging level")


def dimension_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``metrics_dimensions`` as a mapping (validated ``Name=Value`` pairs)."""
    return {name.strip(): value.strip() for name, _, value in (p.partition("=") for p in pairs)}
