"""Fraud alerts: the record, its deterministic id, and where alerts go (in-process bus, SQS, SNS).

An :class:`Alert` says *which rule* fired for *which account*, how strongly (``score``), on which
revisions (``evidence``: ``(documentId, version)`` pairs, in event order) and at what event time.
Its ``id`` is a SHA-256 of the rule, the account and the evidence set - nothing else - so the same
fraud found twice (a redelivered batch, a restarted worker, a second worker merging state) has the
same id, and every sink de-duplicates on it:

* **in process** - :class:`AlertBus` calls each subscriber once per alert id (a subscriber that
  raises is called again on the next delivery; the others are not). Other handlers in the same
  process subscribe to :data:`default_bus`::

      from qldbstream_handlers.fraud import Alert, default_bus

      @default_bus.subscriber
      def open_case(alert: Alert) -> None:
          ...                           # must be durable (or idempotent) before it returns

* **SQS** - :class:`SqsAlertSink`: a FIFO queue gets ``MessageDeduplicationId = alert id`` and
  ``MessageGroupId = account`` (per-account order); a standard queue gets the id as the
  ``alertId`` message attribute for consumers to de-duplicate on.
* **SNS** - :class:`SnsAlertSink`: the same, for FIFO and standard topics.

The message body is :meth:`Alert.to_json`; :meth:`Alert.from_json` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from qldbstream.api import RetryableError
from qldbstream_handlers.fraud.events import EventKey

__all__ = [
    "Alert",
    "AlertBus",
    "AlertSink",
    "BusSink",
    "SnsAlertSink",
    "SqsAlertSink",
    "alert_id",
    "default_bus",
]


def alert_id(rule: str, account_id: str, evidence: Iterable[EventKey]) -> str:
    """SHA-256 (hex) of the rule, the account and the evidence *set* (order does not matter)."""
    keys = sorted(f"{doc}#{version}" for doc, version in evidence)
    text = "\x1f".join([rule, account_id, *keys])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Alert:
    """One detected pattern. ``details`` and ``explanation`` are JSON-able."""

    id: str
    rule: str
    account_id: str
    score: float
    #: ``(documentId, version)`` of the revisions that make the case, in event order
    evidence: tuple[EventKey, ...]
    #: event time (``txTime``) of the transaction at which the rule fired, epoch milliseconds
    event_time_ms: int
    details: Mapping[str, Any] = field(default_factory=dict)
    #: anomaly alerts: per feature ``ATTRIBUTION_SCORE``, ``STRENGTH``, ``DIRECTIONALITY``
    explanation: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def create(
        cls,
        rule: str,
        account_id: str,
        score: float,
        evidence: Iterable[EventKey],
        event_time_ms: int,
        details: Mapping[str, Any] | None = None,
        explanation: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Alert:
        keys = tuple(evidence)
        return cls(
            alert_id(rule, account_id, keys),
            rule,
            account_id,
            round(score, 6),
            keys,
            event_time_ms,
            dict(details or {}),
            explanation,
        )

    @property
    def event_time(self) -> str:
        """The event time as ISO 8601 UTC with milliseconds."""
        moment = datetime.fromtimestamp(self.event_time_ms / 1000, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def top_feature(self) -> str | None:
        """The feature that contributed most to an anomaly score (``None`` for other rules)."""
        if not self.explanation:
            return None
        return max(self.explanation, key=lambda f: (float(self.explanation[f]["ATTRIBUTION_SCORE"]), f))  # type: ignore[index]

    def to_json(self) -> str:
        return json.dumps(
            {
                "alertId": self.id,
                "rule": self.rule,
                "accountId": self.account_id,
                "score": self.score,
                "evidence": [{"documentId": d, "version": v} for d, v in self.evidence],
                "eventTime": self.event_time,
                "eventTimeMs": self.event_time_ms,
                "details": self.details,
                "explanation": self.explanation,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Alert:
        data = json.loads(text)
        return cls(
            data["alertId"],
            data["rule"],
            data["accountId"],
            float(data["score"]),
            tuple((e["documentId"], int(e["version"])) for e in data["evidence"]),
            int(data["eventTimeMs"]),
            data.get("details") or {},
            data.get("explanation"),
        )


Subscriber = Callable[[Alert], None]
S = TypeVar("S", bound=Subscriber)


class AlertBus:
    """In-process fan-out with per-subscriber de-duplication by alert id (bounded memory)."""

    def __init__(self, remember: int = 100_000) -> None:
        self.remember = remember
        self._subscribers: list[tuple[Subscriber, OrderedDict[str, None]]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(alert)`` once per alert id from now on; returns a function that unsubscribes."""
        entry: tuple[Subscriber, OrderedDict[str, None]] = (fn, OrderedDict())
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def subscriber(self, fn: S) -> S:
        """Decorator form of :meth:`subscribe`; returns the function unchanged."""
        self.subscribe(fn)
        return fn

    def publish(self, alert: Alert) -> None:
        """Deliver to every subscriber that has not had this id; the first failure propagates."""
        with self._lock:
            subscribers = list(self._subscribers)
        for fn, seen in subscribers:
            if alert.id in seen:
                continue
            fn(alert)
            seen[alert.id] = None
            while len(seen) > self.remember:
                seen.popitem(last=False)


#: The process-wide bus the fraud handler publishes to unless given another.
default_bus = AlertBus()


class AlertSink(Protocol):
    """Somewhere alerts go. ``publish`` raises when the alert was not accepted."""

    name: str

    def publish(self, alert: Alert) -> None: ...


class BusSink:
    """Publishes to an :class:`AlertBus`."""

    def __init__(self, bus: AlertBus) -> None:
        self.bus = bus
        self.name = "bus"

    def publish(self, alert: Alert) -> None:
        self.bus.publish(alert)


def _attributes(alert: Alert) -> dict[str, Any]:
    return {
        "alertId": {"DataType": "String", "StringValue": alert.id},
        "rule": {"DataType": "String", "StringValue": alert.rule},
        "accountId": {"DataType": "String", "StringValue": alert.account_id},
    }


def _transient(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError):
        return RetryableError(f"{what} unavailable: {exc}")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or "Throttl" in code or code in ("RequestThrottled", "KMSThrottlingException"):
            return RetryableError(f"{what}: {code}")
    return exc


class SqsAlertSink:
    """An SQS queue; FIFO queues de-duplicate on the alert id (5-minute SQS window)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self.name = f"sqs:{queue_url}"

    def publish(self, alert: Alert) -> None:
        extra: dict[str, Any] = {}
        if self.fifo:
            extra = {"MessageGroupId": alert.account_id, "MessageDeduplicationId": alert.id}
        try:
            self.client.send_message(
                QueueUrl=self.queue_url,
                MessageBody=alert.to_json(),
                MessageAttributes=_attributes(alert),
                **extra,
            )
        except Exception as exc:
            mapped = _transient(exc, "SQS alert queue")
            if mapped is exc:
                raise
            raise mapped from exc


class SnsAlertSink:
    """An SNS topic; FIFO topics de-duplicate on the alert id."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self.client = client
        self.topic_arn = topic_arn
        self.fifo = topic_arn.endswith(".fifo")
        self.name = f"sns:{topic_arn}"

    def publish(self, alert: Alert) -> None:
        extra: dict[str, Any] = {}
        if self.fifo:
            extra = {"MessageGroupId": alert.account_id, "MessageDeduplicationId": alert.id}
        try:
            self.client.publish(
                TopicArn=self.topic_arn,
                Message=alert.to_json(),
                Subject=f"qldbstream fraud alert: {alert.rule}"[:100],
                MessageAttributes=_attributes(alert),
                **extra,
            )
        except Exception as exc:
            mapped = _transient(exc, "SNS alert topic")
            if mapped is exc:
                raise
            raise mapped from exc
