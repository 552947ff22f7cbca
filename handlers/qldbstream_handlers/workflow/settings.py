"""The workflow handler's settings (``QLDBSTREAM_HANDLER_WORKFLOW__<KEY>``), parsed once and frozen.

* ``definition`` = ``example`` (the seed's workflow, bundled) or the path of a definition JSON file.
* ``substitutions`` - ``Name=value`` pairs, comma-separated, for ``${Name}`` in the definition.
* ``mode`` = ``local`` (run it here, with the interpreter) or ``remote`` (start Step Functions
  executions of ``state_machine_arn``).
* ``tasks`` - ``module:attribute`` of a :class:`TaskRegistry` (or a factory taking the settings
  dict) for a custom definition in local mode; the example brings its own.
* ``tables``, ``operations`` - which revisions start an execution (default: every revision;
  operations are ``insert``, ``update``, ``delete``, ``redacted``).
* ``alerts`` = ``true``: subscribe to the fraud handler's in-process alert bus; alerts enrich
  revision events, and alerts of ``alert_rules`` start executions of their own
  (default: every rule but ``high_value``, whose transaction starts one anyway; ``all``; ``none``).
* ``done_markers`` = ``memory`` or ``dynamodb:<table>`` (local mode, see ``executions.py``).
* ``region``, ``endpoint_url`` - for the boto3 clients (SNS, DynamoDB, Step Functions).
* The example's own: ``security_alert_topic_arn``, ``compliance_table_name`` (required with it),
  ``function_arn_prefix``, ``high_value_min`` (``10000``), ``small_amount_limit`` (``10``; ``off``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from qldbstream.api import ConfigurationError

__all__ = ["WorkflowSettings"]

_KEYS = frozenset(
    {
        "definition",
        "substitutions",
        "mode",
        "state_machine_arn",
        "tasks",
        "tables",
        "operations",
        "alerts",
        "alert_rules",
        "done_markers",
        "region",
        "endpoint_url",
        "security_alert_topic_arn",
        "compliance_table_name",
        "function_arn_prefix",
        "high_value_min",
        "small_amount_limit",
    }
)
_OPERATIONS = frozenset({"insert", "update", "delete", "redacted"})


def _fail(message: str) -> ConfigurationError:
    return ConfigurationError(f"workflow handler: {message}")


def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    definition: str = "example"
    substitutions: Mapping[str, str] | None = None
    mode: str = "local"
    state_machine_arn: str | None = None
    tasks: str | None = None
    tables: frozenset[str] | None = None
    operations: frozenset[str] | None = None
    alerts: bool = True
    #: ``None``: every rule but ``high_value``; empty: none
    alert_rules: frozenset[str] | None = None
    all_alert_rules: bool = False
    done_markers: str = "memory"
    region: str | None = None
    endpoint_url: str | None = None
    security_alert_topic_arn: str | None = None
    compliance_table_name: str | None = None
    function_arn_prefix: str | None = None
    high_value_min: Decimal = Decimal("10000")
    small_amount_limit: Decimal | None = Decimal("10")

    @classmethod
    def parse(cls, settings: Mapping[str, str]) -> WorkflowSettings:
        own = {k.lower(): str(v).strip() for k, v in settings.items()}
        unknown = set(own) - _KEYS
        if unknown:
            raise _fail(f"unknown settings {sorted(unknown)} (known: {', '.join(sorted(_KEYS))})")
        mode = own.get("mode", "local").lower()
        if mode not in ("local", "remote"):
            raise _fail(f"mode must be local or remote, not {mode!r}")
        if mode == "remote" and not own.get("state_machine_arn"):
            raise _fail("remote mode needs state_machine_arn")
        subs: dict[str, str] = {}
        for pair in _list(own.get("substitutions", "")):
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise _fail(f"substitutions: {pair!r} is not Name=value")
            subs[name.strip()] = value.strip()
        operations = frozenset(_list(own.get("operations", ""))) or None
        if operations is not None and not operations <= _OPERATIONS:
            raise _fail(
                f"operations: unknown {sorted(operations - _OPERATIONS)} (known: {sorted(_OPERATIONS)})"
            )
        alerts = own.get("alerts", "true").lower()
        if alerts not in ("true", "false"):
            raise _fail(f"alerts must be true or false, not {alerts!r}")
        rules_text = own.get("alert_rules", "").lower()
        rules = (
            None
            if rules_text in ("", "all")
            else frozenset()
            if rules_text == "none"
            else frozenset(_list(rules_text))
        )
        markers = own.get("done_markers", "memory")
        if markers != "memory" and not (markers.startswith("dynamodb:") and len(markers) > len("dynamodb:")):
            raise _fail(f"done_markers must be memory or dynamodb:<table>, not {markers!r}")
        definition = own.get("definition", "example") or "example"
        if definition == "example" and mode == "local":
            for key in ("security_alert_topic_arn", "compliance_table_name"):
                if not own.get(key):
                    raise _fail(f"the example definition needs {key}")
        return cls(
            definition=definition,
            substitutions=subs,
            mode=mode,
            state_machine_arn=own.get("state_machine_arn") or None,
            tasks=own.get("tasks") or None,
            tables=frozenset(_list(own.get("tables", ""))) or None,
            operations=operations,
            alerts=alerts == "true",
            alert_rules=rules,
            all_alert_rules=rules_text == "all",
            done_markers=markers,
            region=own.get("region") or None,
            endpoint_url=own.get("endpoint_url") or None,
            security_alert_topic_arn=own.get("security_alert_topic_arn") or None,
            compliance_table_name=own.get("compliance_table_name") or None,
            function_arn_prefix=own.get("function_arn_prefix") or None,
            high_value_min=_decimal(own.get("high_value_min", "10000"), "high_value_min"),
            small_amount_limit=None
            if own.get("small_amount_limit", "").lower() == "off"
            else _decimal(own.get("small_amount_limit") or "10", "small_amount_limit"),
        )

    def starts_for_rule(self, rule: str) -> bool:
        """Whether an alert of ``rule`` starts an execution of its own."""
        if self.all_alert_rules:
            return True
        if self.alert_rules is None:
            return rule != "high_value"
        return rule in self.alert_rules


def _decimal(text: str, key: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _fail(f"{key} must be a number, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise _fail(f"{key} must be a non-negative number, not {text!r}")
    return value
