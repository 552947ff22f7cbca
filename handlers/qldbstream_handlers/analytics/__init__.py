"""Stream analytics: keyed event-time windows over verified QLDB revisions.

Tumbling, hopping and session windows on a revision's ``txTime``, grouped by a document field,
filtered by table, operation and a predicate; ``count``, ``count_distinct``, ``sum``, ``avg``,
``min`` and ``max``; late events correct their windows (a window that left memory is loaded back:
nothing is dropped); results to CloudWatch EMF, a DynamoDB table or Parquet files - each written
idempotently by a deterministic result key, and persisted with the window state in ``flush``,
before the checkpoint moves. With several consumers (``scope = shard``: Lambda, several KCL
workers) each shard's part of a window is stored and every flush writes the exact union.

Settings (plugin ``analytics``; see ``docs/handlers/analytics.md``)::

    [handlers.analytics]
    preset = "transaction_velocity"      # or window / aggregates / tables / group_by / where ...
    sinks = "dynamodb,parquet"
    dynamodb_table = "velocity"
    parquet_path = "s3://analytics/velocity"
    state = "dynamodb:analytics-state"

Python API::

    from qldbstream_handlers.analytics import AnalyticsHandler, Query, Tumbling, count, sum_of

    query = Query("wires", Tumbling("1h"), (count("n"), sum_of("total", "amount")),
                  tables=frozenset({"Transactions"}), where=lambda d: d.get("type") == "WIRE_OUT")
    handler = AnalyticsHandler(queries=[query], sinks=[...], state=DynamoDBStateStore(client, "state"))
"""

from qldbstream_handlers.analytics.aggregates import (
    Aggregate,
    Kind,
    avg_of,
    count,
    count_distinct,
    max_of,
    min_of,
    parse_aggregates,
    sum_of,
)
from qldbstream_handlers.analytics.dynamodb_sink import DynamoDBSink
from qldbstream_handlers.analytics.engine import WindowEngine, merge_parts
from qldbstream_handlers.analytics.handler import AnalyticsHandler
from qldbstream_handlers.analytics.parquet_sink import ParquetSink
from qldbstream_handlers.analytics.query import TRANSACTION_VELOCITY, Event, Query, parse_where
from qldbstream_handlers.analytics.results import Pane, Retraction, WindowResult
from qldbstream_handlers.analytics.settings import AnalyticsOptions, parse_settings
from qldbstream_handlers.analytics.sinks import EmfSink, ResultSink
from qldbstream_handlers.analytics.state import DynamoDBStateStore, InMemoryStateStore, StateStore
from qldbstream_handlers.analytics.windows import Hopping, Session, Tumbling, duration_ms, parse_window

__all__ = [
    "TRANSACTION_VELOCITY",
    "Aggregate",
    "AnalyticsHandler",
    "AnalyticsOptions",
    "DynamoDBSink",
    "DynamoDBStateStore",
    "EmfSink",
    "Event",
    "Hopping",
    "InMemoryStateStore",
    "Kind",
    "Pane",
    "ParquetSink",
    "Query",
    "ResultSink",
    "Retraction",
    "Session",
    "StateStore",
    "Tumbling",
    "WindowEngine",
    "WindowResult",
    "avg_of",
    "count",
    "count_distinct",
    "duration_ms",
    "max_of",
    "merge_parts",
    "min_of",
    "parse_aggregates",
    "parse_settings",
    "parse_where",
    "parse_window",
    "sum_of",
]
