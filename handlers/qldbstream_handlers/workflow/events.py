"""The workflow's input contract: one JSON event per verified revision or per fraud alert.

A **revision event** (``source: "qldb"``) - execution name ``<documentId>-<version>``::

    {"source": "qldb", "eventId": "<documentId>-<version>", "documentId", "version", "table",
     "operation": "insert" | "update" | "delete" | "redacted", "txId", "timestamp": "<txTime ISO>",
     "blockSequenceNo", "data": {...the document as JSON, or null...},
     "fraud": {"score": <highest alert score, 0 without one>, "alerts": [<alert summaries>]}}

An **alert event** (``source: "fraud"``) - execution name ``alert-<alertId>``::

    {"source": "fraud", "eventId": "alert-<alertId>", "alertId", "rule", "accountId", "score",
     "evidence": [{"documentId", "version"}], "timestamp": "<event time ISO>", "details": {...}}

An alert summary is ``{"alertId", "rule", "accountId", "score"}``. Alerts come from the fraud
handler's in-process bus (:class:`qldbstream_handlers.fraud.Alert`); :class:`AlertBook` keeps the
recent ones so that a revision event carries the alerts that name it as evidence. Ion values
become JSON: decimals numbers, timestamps ISO 8601 strings, symbols strings, blobs base64, typed
nulls ``null``.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from amazon.ion.core import IonType

from qldbstream.api import RevisionDetails, operation_of

__all__ = ["AlertBook", "AlertLike", "alert_event", "execution_name", "revision_event", "to_json"]


class AlertLike(Protocol):
    """What the workflow reads of a fraud alert (``qldbstream_handlers.fraud.Alert`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def evidence(self) -> tuple[tuple[str, int], ...]: ...
    @property
    def event_time(self) -> str: ...
    @property
    def details(self) -> Any: ...


def to_json(value: Any) -> Any:
    """An Ion value (amazon-ion ``simpleion`` types) as plain JSON values."""
    if value is None or type(value).__name__ == "IonPyNull":
        return None
    if isinstance(value, bool) or getattr(value, "ion_type", None) is IonType.BOOL:
        return bool(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, str):
        return str(value)
    text = getattr(value, "text", None)  # an Ion symbol
    if isinstance(text, str):
        return text
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return str(value)


def execution_name(document_id: str, version: int) -> str:
    """``<documentId>-<version>``: a valid Step Functions execution name, unique per revision."""
    return f"{document_id}-{version}"


def summary(alert: AlertLike) -> dict[str, Any]:
    return {"alertId": alert.id, "rule": alert.rule, "accountId": alert.account_id, "score": alert.score}


def revision_event(revision: RevisionDetails, alerts: Iterable[AlertLike] = ()) -> dict[str, Any]:
    """The revision event (see the module docstring)."""
    found = [summary(a) for a in alerts]
    return {
        "source": "qldb",
        "eventId": execution_name(revision.document_id, revision.version),
        "documentId": revision.document_id,
        "version": revision.version,
        "table": revision.table_name,
        "operation": operation_of(revision),
        "txId": revision.tx_id,
        "timestamp": to_json(revision.tx_time),
        "blockSequenceNo": revision.block_address.sequence_no,
        "data": to_json(revision.data),
        "fraud": {"score": max((a["score"] for a in found), default=0), "alerts": found},
    }


def alert_event(alert: AlertLike) -> dict[str, Any]:
    """The alert event (see the module docstring)."""
    return {
        "source": "fraud",
        "eventId": f"alert-{alert.id}",
        "alertId": alert.id,
        "rule": alert.rule,
        "accountId": alert.account_id,
        "score": alert.score,
        "evidence": [{"documentId": d, "version": v} for d, v in alert.evidence],
        "timestamp": alert.event_time,
        "details": to_json(dict(alert.details or {})),
    }


class AlertBook:
    """The most recent alerts (bounded), found by the revisions they name and by account."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._alerts: OrderedDict[str, AlertLike] = OrderedDict()
        self._by_revision: dict[tuple[str, int], set[str]] = {}
        self._by_account: dict[str, set[str]] = {}

    def add(self, alert: AlertLike) -> None:
        if alert.id in self._alerts:
            return
        self._alerts[alert.id] = alert
        for key in alert.evidence:
            self._by_revision.setdefault((key[0], key[1]), set()).add(alert.id)
        self._by_account.setdefault(alert.account_id, set()).add(alert.id)
        while len(self._alerts) > self.size:
            _, old = self._alerts.popitem(last=False)
            for key in old.evidence:
                self._by_revision.get((key[0], key[1]), set()).discard(old.id)
            self._by_account.get(old.account_id, set()).discard(old.id)

    def for_revision(self, document_id: str, version: int, account_id: str | None = None) -> list[AlertLike]:
        """Alerts naming the revision, then (``account_id`` given) the other alerts of the account."""
        ids = sorted(self._by_revision.get((document_id, version), set()))
        if account_id is not None:
            ids += sorted(self._by_account.get(account_id, set()) - set(ids))
        return [self._alerts[i] for i in ids if i in self._alerts]

    def __len__(self) -> int:
        return len(self._alerts)
