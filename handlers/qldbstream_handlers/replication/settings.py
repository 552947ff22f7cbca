"""The replication handler's settings: parsed once from its settings dict, validated, frozen.

Keys (``QLDBSTREAM_HANDLER_REPLICATION__<KEY>``, or ``[handlers.replication]`` in a file), with
their defaults:

* ``targets`` (required) - target names in priority order, comma-separated; the first is the
  primary. Per target: ``<name>_stream`` (required), ``<name>_region``, ``<name>_endpoint``.
* ``mode`` = ``fanout`` (every target gets every record) or ``failover`` (the active target does).
* ``records`` = ``revision_details``; add ``block_summary`` and/or ``control`` to republish those.
* ``tables`` = all; comma-separated table names to restrict the revisions republished.
* ``aggregate`` = ``false``; ``true`` re-aggregates user records in the KPL format.
* ``health_check_interval`` = ``60`` seconds between health probes (``DescribeStreamSummary``).
* ``failover_threshold`` = ``3`` consecutive failed puts/probes that make a target unhealthy.
* ``recovery_threshold`` = ``1`` consecutive successful probes that make it healthy again.
* ``auto_failover`` = ``true`` (failover mode): move to the next healthy target on its own.
* ``failback`` = ``true`` (failover mode): return to a higher-priority target once it is healthy.
* ``put_attempts`` = ``4`` ``PutRecords`` attempts per round (throttling, per-record failures).
* ``sent_cache_size`` = ``100000`` keys remembered per lane to skip re-puts after a failed flush
  (and documents whose highest written version each lane remembers).
* ``late_policy`` = ``deliver-late``: what the pipeline does, for this handler, with a revision
  older than one already delivered - ``deliver-late`` (the handler skips it and counts it in
  ``replication_late_skipped``) or ``reorder`` (the pipeline first holds a revision whose
  predecessor is missing, for up to its ``reorder_window_seconds``).
* ``raw_copy_kms_key_id`` = none: write the original bytes **encrypted** (KMS envelope
  encryption; the key id, ARN or alias, resolved in each target's region) - a copy verifiable byte
  for byte once opened, e.g. for disaster recovery. Without it, and with masking on, targets get
  the masked form (:mod:`qldbstream.core.replica`); with masking off, the original bytes.

Target names are lower-case letters and digits (``west``, ``eu1``) so that every key is also a
valid environment variable name: ``QLDBSTREAM_HANDLER_REPLICATION__WEST_STREAM=ledger-dr``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from qldbstream.api import ConfigurationError, RecordType

__all__ = ["Mode", "ReplicationSettings", "TargetConfig"]

N = TypeVar("N", int, float)

_NAME = re.compile(r"[a-z][a-z0-9]*\Z")
_TARGET_FIELDS = ("stream", "region", "endpoint")
_GLOBAL_KEYS = frozenset(
    {
        "targets",
        "mode",
        "records",
        "tables",
        "aggregate",
        "health_check_interval",
        "failover_threshold",
        "recovery_threshold",
        "auto_failover",
        "failback",
        "put_attempts",
        "sent_cache_size",
        "late_policy",
        "raw_copy_kms_key_id",
    }
)
_LATE_POLICIES = ("deliver-late", "reorder")


class Mode(StrEnum):
    #: every target receives every record; the checkpoint waits for all of them
    FANOUT = "fanout"
    #: records go to the active target (the first healthy one in priority order)
    FAILOVER = "failover"


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One target stream: a name used in metrics and logs, the stream, where it lives."""

    name: str
    stream: str
    region: str | None = None
    endpoint: str | None = None

    def describe(self) -> str:
        where = self.region or "the default region"
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.name} (stream {self.stream} in {where}{at})"


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    targets: tuple[TargetConfig, ...]
    mode: Mode = Mode.FANOUT
    record_types: frozenset[RecordType] = frozenset({RecordType.REVISION_DETAILS})
    tables: frozenset[str] | None = None
    aggregate: bool = False
    health_check_interval: float = 60.0
    failover_threshold: int = 3
    recovery_threshold: int = 1
    auto_failover: bool = True
    failback: bool = True
    put_attempts: int = 4
    sent_cache_size: int = 100_000
    late_policy: str = "deliver-late"
    #: the original bytes, encrypted under this KMS key (see the module's doc); None: see masking
    raw_copy_kms_key_id: str | None = None

    @classmethod
    def parse(cls, settings: Mapping[str, str]) -> ReplicationSettings:
        """Validate the settings dict; raise :class:`ConfigurationError` naming the bad key."""
        own = {k.lower(): str(v).strip() for k, v in settings.items()}
        names = _list(own.get("targets", ""))
        if not names:
            raise ConfigurationError("replication handler: 'targets' must name at least one target")
        for name in names:
            if not _NAME.match(name):
                raise ConfigurationError(
                    f"replication handler: target name {name!r} must be lower-case letters and digits"
                )
        if len(set(names)) != len(names):
            raise ConfigurationError(f"replication handler: a target is named twice in {names}")
        per_target = {f"{n}_{f}" for n in names for f in _TARGET_FIELDS}
        unknown = set(own) - _GLOBAL_KEYS - per_target
        if unknown:
            raise ConfigurationError(
                f"replication handler: unknown settings {sorted(unknown)} "
                f"(known: {', '.join(sorted(_GLOBAL_KEYS))} and <target>_stream/_region/_endpoint)"
            )
        targets = []
        for name in names:
            stream = own.get(f"{name}_stream", "")
            if not stream:
                raise ConfigurationError(f"replication handler: target {name!r} needs {name}_stream")
            region, endpoint = own.get(f"{name}_region") or None, own.get(f"{name}_endpoint") or None
            targets.append(TargetConfig(name, stream, region, endpoint))
        try:
            mode = Mode(own.get("mode", "fanout").lower())
        except ValueError:
            raise ConfigurationError(
                f"replication handler: mode must be fanout or failover, not {own['mode']!r}"
            ) from None
        tables = frozenset(_list(own.get("tables", ""))) or None
        late_policy = own.get("late_policy", "deliver-late").lower() or "deliver-late"
        if late_policy not in _LATE_POLICIES:
            raise ConfigurationError(
                f"replication handler: late_policy must be deliver-late or reorder, not {late_policy!r} "
                "(drop would lose versions without this handler counting them)"
            )
        return cls(
            tuple(targets),
            mode,
            _record_types(own.get("records", "revision_details")),
            tables,
            _bool(own, "aggregate", False),
            _number(own, "health_check_interval", 60.0, float, minimum=0.0),
            _number(own, "failover_threshold", 3, int, minimum=1),
            _number(own, "recovery_threshold", 1, int, minimum=1),
            _bool(own, "auto_failover", True),
            _bool(own, "failback", True),
            _number(own, "put_attempts", 4, int, minimum=1),
            _number(own, "sent_cache_size", 100_000, int, minimum=0),
            late_policy,
            own.get("raw_copy_kms_key_id") or None,
        )


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _record_types(text: str) -> frozenset[RecordType]:
    out = set()
    for item in _list(text):
        try:
            out.add(RecordType(item.upper()))
        except ValueError:
            raise ConfigurationError(
                f"replication handler: records: {item!r} is not revision_details, block_summary or control"
            ) from None
    if not out:
        raise ConfigurationError("replication handler: records must name at least one record type")
    return frozenset(out)


def _bool(own: Mapping[str, str], key: str, default: bool) -> bool:
    text = own.get(key, "").lower()
    if not text:
        return default
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"replication handler: {key} must be true or false, not {text!r}")


def _number(own: Mapping[str, str], key: str, default: N, kind: type[N], *, minimum: N) -> N:
    text = own.get(key, "")
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigurationError(f"replication handler: {key} must be a number, not {text!r}") from None
    if value < minimum:
        raise ConfigurationError(f"replication handler: {key} must be at least {minimum}, not {value}")
    return value
