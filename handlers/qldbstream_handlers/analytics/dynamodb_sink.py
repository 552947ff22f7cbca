"""Window results in a DynamoDB table, one item per result key, overwritten by revision.

Item layout (table keys ``pk`` (S) and ``sk`` (S))::

    pk            "<query>#<group>"  (+ "#<shard>" in scope = shard; group "null" when there is none)
    sk            "<window start ISO>/<window end ISO>"
    query, group, shard, window_start, window_end (ISO), window_start_ms (N), revision (N), final (BOOL)
    values        a map: aggregate name -> N (NULL when there were no values)

A query's time series for one group is one ``Query`` on ``pk``. Writes are ``PutItem`` with the
condition ``attribute_not_exists(pk) OR revision <= :revision``: a replay rewrites the same item
with the same values, and an older revision never overwrites a newer one. A retracted session
result is deleted under the same condition.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from qldbstream_handlers.analytics.results import Pane, Retraction, WindowResult
from qldbstream_handlers.analytics.sinks import iso_ms

__all__ = ["DynamoDBSink", "result_key"]

_CONDITION = "attribute_not_exists(pk) OR revision <= :revision"


def result_key(query: str, group: str | None, start: int, end: int, shard: str | None) -> dict[str, Any]:
    pk = f"{query}#{'null' if group is None else group}" + (f"#{shard}" if shard else "")
    return {"pk": {"S": pk}, "sk": {"S": f"{iso_ms(start)}/{iso_ms(end)}"}}


class DynamoDBSink:
    name = "dynamodb"

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    @staticmethod
    def create_table(client: Any, table: str) -> None:
        """Create the results table (on-demand) and wait for it; an existing table is fine."""
        from qldbstream_handlers.analytics.state import DynamoDBStateStore

        DynamoDBStateStore.create_table(client, table)

    @staticmethod
    def item(row: WindowResult) -> dict[str, Any]:
        values = {
            name: {"NULL": True} if value is None else {"N": str(value)} for name, value in row.values.items()
        }
        item = {
            **result_key(row.query, row.group, row.window_start, row.window_end, row.shard),
            "query": {"S": row.query},
            "group": {"NULL": True} if row.group is None else {"S": row.group},
            "window_start": {"S": iso_ms(row.window_start)},
            "window_end": {"S": iso_ms(row.window_end)},
            "window_start_ms": {"N": str(row.window_start)},
            "revision": {"N": str(row.revision)},
            "final": {"BOOL": row.final},
            "values": {"M": values},
        }
        if row.shard:
            item["shard"] = {"S": row.shard}
        return item

    def write(self, panes: Sequence[Pane], retractions: Sequence[Retraction]) -> None:
        conflict = self.client.exceptions.ConditionalCheckFailedException
        for r in retractions:
            with contextlib.suppress(conflict):  # a newer revision is stored: it stays
                self.client.delete_item(
                    TableName=self.table,
                    Key=result_key(r.query, r.group, r.window_start, r.window_end, r.shard),
                    ConditionExpression=_CONDITION,
                    ExpressionAttributeValues={":revision": {"N": str(r.revision)}},
                )
        for pane in panes:
            for row in pane.rows:
                if row.group not in pane.changed:
                    continue
                with contextlib.suppress(conflict):  # a newer revision is stored: it stays
                    self.client.put_item(
                        TableName=self.table,
                        Item=self.item(row),
                        ConditionExpression=_CONDITION,
                        ExpressionAttributeValues={":revision": {"N": str(row.revision)}},
                    )

    def close(self) -> None:
        pass
