"""The fraud handler's settings: read once from its own settings dict, validated, frozen.

Every key is optional (``QLDBSTREAM_HANDLER_FRAUD__<KEY>`` in the environment, or the
``[handlers.fraud]`` table of the configuration file); an unknown key or a bad value is a
:class:`~qldbstream.core.errors.ConfigurationError` at start-up. See ``docs/handlers/fraud.md`` for
the full table; durations are ``300s``, ``5m``, ``1h`` (a bare number is seconds), and ``off``
disables a rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from qldbstream.api import ConfigurationError
from qldbstream_handlers.fraud.events import FieldMap, parse_duration_ms
from qldbstream_handlers.fraud.rules import HighValueRule, Limit, SequenceRule, WindowRule, parse_pattern

__all__ = ["DEFAULT_PATTERNS", "AnomalySettings", "FraudSettings", "parse_settings"]

#: The seed's ``pattern_matching`` query, ``PATTERN (SMALL_TXN{5,} WITHIN INTERVAL '5' MINUTE)`` with
#: ``SMALL_TXN AS amount < 10``, with ``MATCH_RECOGNIZE`` semantics - except that the account's other
#: transactions may sit between the small ones (``sequence``, not ``consecutive``: see the rules'
#: module and ``docs/handlers/fraud.md``).
DEFAULT_PATTERNS = {"rapid_small_transactions": "sequence >= 5 within 5m where amount < 10"}

_PLAIN_KEYS = frozenset(
    {
        "table",
        "account_field",
        "amount_field",
        "currency_field",
        "category_field",
        "type_field",
        "high_value",
        "velocity_window",
        "velocity_max_count",
        "velocity_max_sum",
        "allowed_lateness",
        "anomaly",
        "anomaly_threshold",
        "anomaly_trees",
        "anomaly_sample_size",
        "anomaly_min_points",
        "anomaly_seed",
        "sinks",
        "state_store",
        "state_ttl",
        "region",
        "endpoint_url",
        "max_accounts",
        "drain_on_completed",
        "min_shards",
    }
)
_HIGH_VALUE_CCY = re.compile(r"^high_value_([a-z]{3})$")
_PATTERN = re.compile(r"^pattern_([a-z][a-z0-9_]*)$")
_OFF = ("off", "none", "false", "no")


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    threshold: float = 10.0
    trees: int = 40
    sample_size: int = 32
    min_points: int = 8
    seed: int = 0


@dataclass(frozen=True)
class FraudSettings:
    table: str = "Transactions"
    fields: FieldMap = field(default_factory=FieldMap)
    high_value: HighValueRule | None = field(default_factory=HighValueRule)
    #: velocity and pattern rules, evaluated in this order
    rules: tuple[WindowRule | SequenceRule, ...] = ()
    #: how far behind its shard's newest ``txTime`` a transaction may arrive (disorder within a shard)
    allowed_lateness_ms: int = 60_000
    anomaly: AnomalySettings | None = field(default_factory=AnomalySettings)
    #: ``bus``, ``sqs:<queue url>``, ``sns:<topic arn>``
    sinks: tuple[str, ...] = ("bus",)
    #: ``memory`` or ``dynamodb:<table>``
    state_store: str = "memory"
    state_ttl_seconds: float | None = 30 * 86_400.0
    region: str | None = None
    endpoint_url: str | None = None
    max_accounts: int = 100_000
    #: evaluate everything as soon as CONTROL ``COMPLETED`` is read (else: when every shard is done)
    drain_on_completed: bool = False
    #: no window rule or pattern is evaluated before this many shards delivered transactions
    min_shards: int = 1


def _fail(key: str, reason: str) -> ConfigurationError:
    return ConfigurationError(f"fraud handler: {key}: {reason}")


def _decimal(key: str, text: str) -> Decimal | None:
    if text.strip().lower() in _OFF:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise _fail(key, f"{text!r} is not a number (or 'off')") from None
    if not value.is_finite() or value < 0:
        raise _fail(key, "must be a non-negative number")
    return value


def _int(key: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise _fail(key, f"{text!r} is not an integer") from None
    if value < minimum:
        raise _fail(key, f"must be at least {minimum}")
    return value


def _bool(key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    raise _fail(key, f"{text!r} is not true or false")


def parse_settings(raw: Mapping[str, str] | None) -> FraudSettings:
    """Validate the handler's own settings (see the module docstring)."""
    own = {str(k).lower(): str(v) for k, v in (raw or {}).items()}
    unknown = sorted(
        k for k in own if k not in _PLAIN_KEYS and not _HIGH_VALUE_CCY.match(k) and not _PATTERN.match(k)
    )
    if unknown:
        raise ConfigurationError(
            f"fraud handler: unknown settings {unknown} (known: {', '.join(sorted(_PLAIN_KEYS))}, "
            "high_value_<currency>, pattern_<name>)"
        )
    defaults = FraudSettings()
    field_map = FieldMap(
        own.get("account_field", "accountId"),
        own.get("amount_field", "amount"),
        own.get("currency_field", "currency"),
        own.get("category_field", "merchantCategory"),
        own.get("type_field", "type"),
    )
    per_currency = {
        m.group(1).upper(): value
        for k, v in own.items()
        if (m := _HIGH_VALUE_CCY.match(k)) and (value := _decimal(k, v)) is not None
    }
    default_threshold = _decimal("high_value", own.get("high_value", "10000"))
    high_value = (
        HighValueRule(default_threshold, per_currency)
        if default_threshold is not None or per_currency
        else None
    )
    rules: list[WindowRule | SequenceRule] = []
    window = parse_duration_ms(own.get("velocity_window", "10m"), "velocity_window")
    max_count = _decimal("velocity_max_count", own.get("velocity_max_count", "10"))
    max_sum = _decimal("velocity_max_sum", own.get("velocity_max_sum", "off"))
    limits = []
    if max_count is not None:
        limits.append(Limit("count", ">", max_count))
    if max_sum is not None:
        limits.append(Limit("sum", ">", max_sum))
    if limits:
        text = " or ".join(map(str, limits)) + f" within {window / 1000:g}s"
        rules.append(WindowRule("velocity", window, tuple(limits), None, text))
    patterns = dict(DEFAULT_PATTERNS)
    for k, v in own.items():
        if m := _PATTERN.match(k):
            patterns[m.group(1)] = v
    for name, text in sorted(patterns.items()):
        if text.strip().lower() not in _OFF:
            if name == "velocity":
                raise _fail(f"pattern_{name}", "the name 'velocity' is taken by the velocity rule")
            rules.append(parse_pattern(name, text))
    anomaly = None
    if _bool("anomaly", own.get("anomaly", "on")):
        threshold = _decimal("anomaly_threshold", own.get("anomaly_threshold", "10"))
        anomaly = AnomalySettings(
            float(threshold) if threshold is not None else float("inf"),
            _int("anomaly_trees", own.get("anomaly_trees", "40"), 1),
            _int("anomaly_sample_size", own.get("anomaly_sample_size", "32"), 2),
            _int("anomaly_min_points", own.get("anomaly_min_points", "8"), 2),
            _int("anomaly_seed", own.get("anomaly_seed", "0"), 0),
        )
        if anomaly.min_points > anomaly.sample_size:
            raise _fail("anomaly_min_points", "must not exceed anomaly_sample_size")
    sinks = tuple(s.strip() for s in own.get("sinks", "bus").split(",") if s.strip())
    for sink in sinks:
        if sink not in ("bus", "none") and not sink.startswith(("sqs:", "sns:")):
            raise _fail("sinks", f"{sink!r} is not bus, none, sqs:<queue url> or sns:<topic arn>")
    store = own.get("state_store", "memory").strip()
    if store != "memory" and not (store.startswith("dynamodb:") and len(store) > len("dynamodb:")):
        raise _fail("state_store", f"{store!r} is not memory or dynamodb:<table>")
    ttl_text = own.get("state_ttl", "30d")
    ttl = None if ttl_text.strip().lower() in _OFF else parse_duration_ms(ttl_text, "state_ttl") / 1000
    return FraudSettings(
        table=own.get("table", defaults.table),
        fields=field_map,
        high_value=high_value,
        rules=tuple(rules),
        allowed_lateness_ms=parse_duration_ms(own.get("allowed_lateness", "60s"), "allowed_lateness"),
        anomaly=anomaly,
        sinks=tuple(s for s in sinks if s != "none"),
        state_store=store,
        state_ttl_seconds=ttl,
        region=own.get("region") or None,
        endpoint_url=own.get("endpoint_url") or None,
        max_accounts=_int("max_accounts", own.get("max_accounts", "100000"), 1),
        drain_on_completed=_bool("drain_on_completed", own.get("drain_on_completed", "false")),
        min_shards=_int("min_shards", own.get("min_shards", "1"), 1),
    )
