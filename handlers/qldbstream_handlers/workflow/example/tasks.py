"""The example workflow's task callables: the seed's Lambda functions, written for the simulated bank.

``ClassifyEvent`` decides the route from the event (see ``events.py`` for its shape):

* an **alert event** from the fraud handler → ``SuspiciousPattern``;
* a ``Transactions`` revision with ``amount >= high_value_min`` (or a ``high_value`` alert naming
  it) → ``HighValueTransaction``;
* a ``Transactions`` revision named by another fraud alert → ``SuspiciousPattern``; without one, a
  card payment under ``small_amount_limit`` → ``SuspiciousPattern`` with the weak ``small_amount``
  signal (the simple rule, so the route works without the fraud handler too);
* an ``Accounts`` revision that is ``FROZEN`` or ``reviewRequired`` → ``ComplianceEvent``;
* anything else → ``StandardProcessing``.

``InvestigateFraud`` turns the signals into ``fraudScore`` in [0, 1]: each rule has a weight
*w* (the chance that one unit of its score is fraud) and signals combine as independent
evidence, ``fraudScore = 1 - Π (1 - w) ** score``. A planted burst (``rapid_small_transactions``,
score >= 1) gives >= 0.85 and is blocked; a lone small payment gives 0.3 and is processed as
standard. Side effects go to :class:`ExampleServices` (blocked transactions, notifications, the
compliance service), which tests and applications replace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from qldbstream_handlers.workflow.tasks import TaskContext, TaskRegistry

__all__ = [
    "DEFAULT_WEIGHT",
    "RULE_WEIGHTS",
    "ComplianceUnavailable",
    "ExampleServices",
    "build_tasks",
    "fraud_score",
]

#: How much one unit of a rule's score says "fraud" (see the module docstring).
RULE_WEIGHTS = {
    "rapid_small_transactions": 0.85,
    "velocity": 0.6,
    "anomaly": 0.5,
    "small_amount": 0.3,
    "high_value": 0.2,
}
DEFAULT_WEIGHT = 0.5

Event = dict[str, Any]


class ComplianceUnavailable(Exception):
    """The compliance service did not answer (a ``States.TaskFailed`` the workflow retries)."""


def compliance_rule(event: Event) -> tuple[str, str]:
    """The default compliance service: frozen accounts need review, flagged ones are noted."""
    data = event.get("data") or {}
    if data.get("status") == "FROZEN":
        return "REVIEW", f"account {data.get('accountId')} is frozen"
    return "NOTED", f"account {data.get('accountId')} flagged for review (status {data.get('status')})"


@dataclass
class ExampleServices:
    """The example's thresholds and the systems its tasks act on (in memory unless replaced)."""

    high_value_min: Decimal = Decimal("10000")
    small_amount_limit: Decimal | None = Decimal("10")
    compliance: Callable[[Event], tuple[str, str]] = compliance_rule
    #: documentId -> what blocked it
    blocked: dict[str, Event] = field(default_factory=dict)
    notifications: list[Event] = field(default_factory=list)
    #: eventIds that went through StandardProcessing
    processed: list[str] = field(default_factory=list)


def fraud_score(signals: list[Event]) -> float:
    """``1 - Π (1 - w_rule) ** score`` over the signals, rounded to 4 places."""
    keep = 1.0
    for s in signals:
        w = RULE_WEIGHTS.get(str(s.get("rule")), DEFAULT_WEIGHT)
        keep *= (1.0 - w) ** max(0.0, float(s.get("score") or 0.0))
    return round(1.0 - keep, 4) if not math.isnan(keep) else 1.0


def _amount(data: Any) -> Decimal | None:
    value = data.get("amount") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Decimal(str(value))


def build_tasks(services: ExampleServices) -> TaskRegistry:
    """The registry of the example's callables, bound to ``services``."""
    tasks = TaskRegistry()

    @tasks.task("ClassifyEvent")
    def classify(event: Event, ctx: TaskContext) -> Event:
        if event.get("source") == "fraud":
            signals = [{"rule": event["rule"], "score": event["score"]}]
            return {**event, "eventType": "SuspiciousPattern", "fraudSignals": signals}
        data = event.get("data") or {}
        alerts = (event.get("fraud") or {}).get("alerts", [])
        signals = [{"rule": a["rule"], "score": a["score"]} for a in alerts if a["rule"] != "high_value"]
        amount = _amount(data)
        kind = "StandardProcessing"
        if event.get("table") == "Transactions" and amount is not None:
            high = amount >= services.high_value_min or any(a["rule"] == "high_value" for a in alerts)
            small = services.small_amount_limit is not None and amount < services.small_amount_limit
            if high:
                kind = "HighValueTransaction"
            elif signals:
                kind = "SuspiciousPattern"
            elif small and data.get("type") == "CARD_PAYMENT":
                kind, signals = "SuspiciousPattern", [{"rule": "small_amount", "score": 1.0}]
        elif event.get("table") == "Accounts" and (
            data.get("status") == "FROZEN" or data.get("reviewRequired")
        ):
            kind = "ComplianceEvent"
        return {
            **event,
            "eventType": kind,
            "accountId": data.get("accountId") if isinstance(data, dict) else None,
            "amount": None if amount is None else float(amount),
            "fraudSignals": signals,
        }

    @tasks.task("RiskAssessment")
    def risk(event: Event, ctx: TaskContext) -> Event:
        ratio = float(Decimal(str(event["amount"])) / services.high_value_min)
        return {"riskLevel": "HIGH" if ratio >= 5 else "MEDIUM", "riskScore": round(ratio, 4)}

    @tasks.task("NotifyStakeholders")
    def notify(event: Event, ctx: TaskContext) -> Event:
        to = ["treasury", "account-manager"]
        services.notifications.append(
            {
                "eventId": event["eventId"],
                "accountId": event["accountId"],
                "amount": event["amount"],
                "to": to,
            }
        )
        return {"notified": to}

    @tasks.task("AggregateResults")
    def aggregate(results: list[Event], ctx: TaskContext) -> Event:
        risk, notice = results
        event = ctx.context["Execution"]["Input"]
        decision = "manual-review" if risk["riskLevel"] == "HIGH" else "approved"
        return {"eventId": event["eventId"], **risk, **notice, "decision": decision}

    @tasks.task("InvestigateFraud")
    def investigate(event: Event, ctx: TaskContext) -> Event:
        return {**event, "fraudScore": fraud_score(event.get("fraudSignals", []))}

    @tasks.task("BlockTransaction")
    def block(event: Event, ctx: TaskContext) -> Event:
        if event.get("source") == "fraud":
            documents = [e["documentId"] for e in event["evidence"]]
        else:
            documents = [event["documentId"]]
        rules = sorted({s["rule"] for s in event.get("fraudSignals", [])})
        for doc in documents:
            services.blocked.setdefault(
                doc,
                {
                    "eventId": event["eventId"],
                    "accountId": event["accountId"],
                    "fraudScore": event["fraudScore"],
                },
            )
        message = (
            f"Blocked {len(documents)} transaction(s) of account {event['accountId']}: "
            f"{', '.join(rules)}, fraud score {event['fraudScore']:.2f} (event {event['eventId']})"
        )
        return {
            "eventId": event["eventId"],
            "accountId": event["accountId"],
            "blocked": documents,
            "fraudScore": event["fraudScore"],
            "alertMessage": message,
        }

    @tasks.task("ComplianceCheck")
    def compliance(event: Event, ctx: TaskContext) -> Event:
        status, details = services.compliance(event)
        return {
            "eventId": event["eventId"],
            "timestamp": event["timestamp"],
            "complianceStatus": status,
            "complianceDetails": details,
        }

    @tasks.task("StandardProcessing")
    def standard(event: Event, ctx: TaskContext) -> Event:
        services.processed.append(event["eventId"])
        return {
            "eventId": event["eventId"],
            "eventType": event.get("eventType"),
            "fraudScore": event.get("fraudScore"),
            "outcome": "processed",
        }

    return tasks
