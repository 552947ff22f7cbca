"""Fraud detection on QLDB ``Transactions`` revisions: thresholds, windows, patterns, anomaly scores.

The handler plugin ``fraud`` (:class:`FraudHandler`) evaluates, per account and in event time
(the revisions' ``txTime``):

* ``high_value`` - one transaction at or over a threshold (per currency if configured);
* ``velocity`` - count and sum of transactions in a sliding window;
* patterns - ``MATCH_RECOGNIZE`` sequences (the seed's ``rapid_small_transactions``: at least 5
  with ``amount < 10``, the last less than 5 minutes after the first, greedy, skip past last row)
  and "N transactions matching a predicate within T" window rules, from settings or registered in
  Python (:meth:`FraudHandler.add_sequence`, :meth:`FraudHandler.pattern`);
* ``anomaly`` - a Random Cut Forest score per account with an explanation
  (:mod:`~qldbstream_handlers.fraud.rcf`).

Alerts (:class:`Alert`) have deterministic ids and go to the in-process :data:`default_bus`,
SQS and/or SNS. Module map: ``events`` (what is kept of a transaction, predicates) → ``rules``
→ ``rcf`` → ``state`` (per-account state and its stores) → ``alerts`` (alert, bus, sinks) →
``settings`` → ``persistence`` (loading and saving the handler's state) → ``evaluation`` (the
watermark, rules and scores) → ``handler``. See ``docs/handlers/fraud.md``.
"""

from qldbstream_handlers.fraud.alerts import (
    Alert,
    AlertBus,
    AlertSink,
    BusSink,
    SnsAlertSink,
    SqsAlertSink,
    alert_id,
    default_bus,
)
from qldbstream_handlers.fraud.events import Condition, TransactionEvent, parse_conditions
from qldbstream_handlers.fraud.handler import FraudHandler
from qldbstream_handlers.fraud.rcf import FEATURES, AnomalyScore, RandomCutForest
from qldbstream_handlers.fraud.rules import (
    HighValueRule,
    Limit,
    SequenceRule,
    WindowRule,
    parse_pattern,
    parse_sequence_rule,
    parse_window_rule,
)
from qldbstream_handlers.fraud.settings import FraudSettings, parse_settings
from qldbstream_handlers.fraud.state import (
    AccountState,
    DynamoDBStateStore,
    HandlerMeta,
    InMemoryStateStore,
    StateStore,
)

__all__ = [
    "FEATURES",
    "AccountState",
    "Alert",
    "AlertBus",
    "AlertSink",
    "AnomalyScore",
    "BusSink",
    "Condition",
    "DynamoDBStateStore",
    "FraudHandler",
    "FraudSettings",
    "HandlerMeta",
    "HighValueRule",
    "InMemoryStateStore",
    "Limit",
    "RandomCutForest",
    "SequenceRule",
    "SnsAlertSink",
    "SqsAlertSink",
    "StateStore",
    "TransactionEvent",
    "WindowRule",
    "alert_id",
    "default_bus",
    "parse_conditions",
    "parse_pattern",
    "parse_sequence_rule",
    "parse_settings",
    "parse_window_rule",
]
