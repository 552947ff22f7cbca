"""Per-account fraud state, and where it is kept between restarts (memory or DynamoDB).

**What the state is.** For each account (:class:`AccountState`): its recent transactions (the
events, keyed by ``(documentId, version)``), which of them have been evaluated, which each window
rule has consumed as evidence, where each sequence rule's next match attempt starts (its
*cursor*), and the ids of the alerts already raised. For the handler as a whole
(:class:`HandlerMeta`): each shard's progress (its newest event time: the watermark's source),
the shards that are done (read CONTROL ``COMPLETED``, or a Lambda processing window closed after
it), and the accounts with events or attempts still waiting for the watermark.

**Why a checkpointed store rather than a replay window.** Rebuilding windows by re-reading the
stream from ``now - window`` at start-up would need a second reader, a way to map event time to
stream positions, and would still miss events older than the Kinesis retention. Instead the state
is written in the handler's ``flush`` - which the pipeline calls before it moves the checkpoint -
so the stored state always covers every record before the checkpoint. Records after the
checkpoint are delivered again after a restart; events are a set keyed by revision, so adding one
twice changes nothing, and alerts have deterministic ids, so re-raising one is recognised.

**Concurrency.** Several workers (one per shard lease) may share accounts, since a QLDB stream
spreads one account's revisions over all shards. Every item carries a revision counter and is
written with a conditional put; on a conflict the handler reads the stored item, **merges** it
(events, evaluated marks, consumed evidence and alert ids are all grow-only sets, so the union is
always a correct merge; a sequence rule's cursor only moves forward, so the later one wins) and
writes again.

**Size.** Each account keeps the events inside ``retention`` (the longest rule window plus the
allowed lateness) before the oldest event still waiting, plus the ``keep`` (anomaly sample + 1)
events before that, so that an evaluation after a restart sees exactly what it would have seen
without one.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qldbstream.api import ConfigurationError, RetryableError
from qldbstream_handlers.fraud.events import EventKey, TransactionEvent

__all__ = [
    "AccountState",
    "DynamoDBStateStore",
    "HandlerMeta",
    "InMemoryStateStore",
    "StateStore",
]


class StateStore(Protocol):
    """Versioned JSON documents by key. ``put`` is conditional on the revision read."""

    def get(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``key -> (revision, body)`` for the keys that exist (strongly consistent)."""
        ...

    def put(self, key: str, body: str, expected_revision: int) -> int | None:
        """Write if the stored revision is ``expected_revision`` (0: absent); new revision or ``None``."""
        ...


class AccountState:
    """One account's events, evaluation marks, consumed evidence and raised alerts."""

    __slots__ = (
        "_history",
        "account_id",
        "alerts",
        "consumed",
        "cursors",
        "dirty",
        "evaluated",
        "events",
        "revision",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.events: dict[EventKey, TransactionEvent] = {}
        self.evaluated: set[EventKey] = set()
        #: rule name -> keys used as evidence by that rule
        self.consumed: dict[str, set[EventKey]] = {}
        #: alert id -> event time (ms) of the alert
        self.alerts: dict[str, int] = {}
        #: sequence rule name -> order key of the last row of its decided part
        self.cursors: dict[str, tuple[int, str, int]] = {}
        self.revision = 0
        self.dirty = False
        self._history: list[TransactionEvent] | None = None

    def add(self, event: TransactionEvent) -> bool:
        """Add ``event``; ``False`` when it is already known (a duplicate)."""
        if event.key in self.events:
            return False
        self.events[event.key] = event
        self._history = None
        self.dirty = True
        return True

    def history(self) -> list[TransactionEvent]:
        """Every kept event, in the total order."""
        if self._history is None:
            self._history = sorted(self.events.values(), key=lambda e: e.order)
        return self._history

    def pending(self) -> list[TransactionEvent]:
        return [e for e in self.history() if e.key not in self.evaluated]

    def last_evaluated(self) -> tuple[int, str, int] | None:
        done = [self.events[k].order for k in self.evaluated if k in self.events]
        return max(done) if done else None

    def prune(self, horizon_ms: int, keep: int) -> None:
        """Forget evaluated events before ``horizon_ms``, except the last ``keep`` of them."""
        history = self.history()
        old = [e for e in history if e.time_ms < horizon_ms and e.key in self.evaluated]
        drop = old[: max(0, len(old) - keep)]
        if not drop:
            return
        for e in drop:
            del self.events[e.key]
            self.evaluated.discard(e.key)
            for keys in self.consumed.values():
                keys.discard(e.key)
        self.alerts = {a: t for a, t in self.alerts.items() if t >= horizon_ms}
        self._history = None
        self.dirty = True

    def merge(self, other: AccountState) -> None:
        """Union with another copy of the same account (a concurrent writer's)."""
        for key, event in other.events.items():
            self.events.setdefault(key, event)
        self.evaluated |= other.evaluated
        for rule, keys in other.consumed.items():
            self.consumed.setdefault(rule, set()).update(keys)
        self.alerts.update(other.alerts)
        for rule, cursor in other.cursors.items():
            mine = self.cursors.get(rule)
            self.cursors[rule] = cursor if mine is None else max(mine, cursor)
        self._history = None
        self.dirty = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "account": self.account_id,
                "events": [e.to_json() for e in self.history()],
                "evaluated": sorted([d, v] for d, v in self.evaluated),
                "consumed": {r: sorted([d, v] for d, v in keys) for r, keys in sorted(self.consumed.items())},
                "alerts": dict(sorted(self.alerts.items())),
                "cursors": {r: list(c) for r, c in sorted(self.cursors.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str, revision: int) -> AccountState:
        data = json.loads(body)
        state = cls(data["account"])
        for row in data["events"]:
            event = TransactionEvent.from_json(row)
            state.events[event.key] = event
        state.evaluated = {(d, int(v)) for d, v in data["evaluated"]}
        state.consumed = {r: {(d, int(v)) for d, v in keys} for r, keys in data["consumed"].items()}
        state.alerts = {a: int(t) for a, t in data["alerts"].items()}
        state.cursors = {r: (int(c[0]), str(c[1]), int(c[2])) for r, c in data.get("cursors", {}).items()}
        state.revision = revision
        return state


@dataclass
class HandlerMeta:
    """Shard progress and accounts waiting for the watermark (``account -> earliest due time``).

    ``progress`` is each shard's newest event time (raised by a Lambda processing window's end);
    ``done`` the shards that will bring nothing more (read CONTROL ``COMPLETED``, or a Lambda
    processing window closed after ``completed_at``, the arrival time of ``COMPLETED``);
    ``released`` the shards their runtime let go of."""

    max_time_ms: int | None = None
    pending: dict[str, int] = field(default_factory=dict)
    revision: int = 0
    progress: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    #: CONTROL ``COMPLETED`` was read (the stream is bounded and QLDB wrote all of it)
    completed: bool = False
    completed_at: int | None = None
    #: shard -> its progress when its runtime released it (the worker's end of run, a KCL worker's
    #: shutdown); a later event on the shard (a new owner) makes it count as read again
    released: dict[str, int] = field(default_factory=dict)

    def merge(self, other: HandlerMeta) -> None:
        if other.max_time_ms is not None:
            self.max_time_ms = max(self.max_time_ms or other.max_time_ms, other.max_time_ms)
        for account, t in other.pending.items():
            self.pending[account] = min(t, self.pending.get(account, t))
        for shard, t in other.progress.items():
            self.progress[shard] = max(t, self.progress.get(shard, t))
        self.done |= other.done
        self.completed = self.completed or other.completed
        for shard, t in other.released.items():
            self.released[shard] = max(t, self.released.get(shard, t))
        if other.completed_at is not None:
            self.completed_at = max(self.completed_at or other.completed_at, other.completed_at)

    def to_json(self) -> str:
        return json.dumps(
            {
                "max_time_ms": self.max_time_ms,
                "pending": dict(sorted(self.pending.items())),
                "progress": dict(sorted(self.progress.items())),
                "done": sorted(self.done),
                "completed": self.completed,
                "completed_at": self.completed_at,
                "released": dict(sorted(self.released.items())),
            }
        )

    @classmethod
    def from_json(cls, body: str, revision: int) -> HandlerMeta:
        data = json.loads(body)
        return cls(
            data["max_time_ms"],
            {a: int(t) for a, t in data["pending"].items()},
            revision,
            {s: int(t) for s, t in data.get("progress", {}).items()},  # absent before version 2
            set(data.get("done", [])),
            bool(data.get("completed", False)),
            data.get("completed_at"),
            {s: int(t) for s, t in data.get("released", {}).items()},
        )


class InMemoryStateStore:
    """A dict with the store's conditional-write contract: tests, and a single short-lived process."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, str]] = {}

    def get(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        return {k: self.items[k] for k in keys if k in self.items}

    def put(self, key: str, body: str, expected_revision: int) -> int | None:
        current = self.items.get(key, (0, ""))[0]
        if current != expected_revision:
            return None
        self.items[key] = (current + 1, body)
        return current + 1


_COMPRESS_OVER = 32 * 1024
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


class DynamoDBStateStore:
    """One DynamoDB table, partition key ``pk`` (S); items ``rev`` (N), ``body`` (S), ``ttl`` (N).

    Bodies over 32 KiB are stored zlib-compressed (``z:`` + base64). ``ttl`` (epoch seconds,
    ``ttl_seconds`` after the write) lets DynamoDB drop accounts that went quiet. Throttling and
    5xx raise :class:`~qldbstream.core.errors.RetryableError` (the pipeline retries, then halts the
    shard: nothing is lost); a missing table is a :class:`~qldbstream.core.errors.ConfigurationError`.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ttl_seconds: float | None = 30 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    @staticmethod
    def create_table(client: Any, table: str) -> None:
        """Create the table (on-demand capacity) and wait until it exists."""
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ConditionalCheckFailedException":
                return None
            if code == "ResourceNotFoundException":
                raise ConfigurationError(f"fraud state table {self.table!r} does not exist") from exc
            if code in _THROTTLED:
                raise RetryableError(f"fraud state store: {code}") from exc
            raise
        except BotoCoreError as exc:  # connection errors and timeouts
            raise RetryableError(f"fraud state store unavailable: {exc}") from exc

    def get(self, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), 100):
            request: Mapping[str, Any] = {
                self.table: {"Keys": [{"pk": {"S": k}} for k in wanted[i : i + 100]], "ConsistentRead": True}
            }
            for _attempt in range(10):
                response = self._call("batch_get_item", RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    out[item["pk"]["S"]] = (int(item["rev"]["N"]), _unpack(item["body"]["S"]))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise RetryableError("fraud state store: BatchGetItem keeps leaving keys unprocessed")
        return out

    def put(self, key: str, body: str, expected_revision: int) -> int | None:
        item: dict[str, Any] = {
            "pk": {"S": key},
            "rev": {"N": str(expected_revision + 1)},
            "body": {"S": _pack(body)},
        }
        if self.ttl_seconds is not None:
            item["ttl"] = {"N": str(int(self.clock() + self.ttl_seconds))}
        if expected_revision == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "rev = :rev",
                "ExpressionAttributeValues": {":rev": {"N": str(expected_revision)}},
            }
        response = self._call("put_item", TableName=self.table, Item=item, **condition)
        return None if response is None else expected_revision + 1


def _pack(body: str) -> str:
    if len(body) <= _COMPRESS_OVER:
        return body
    return "z:" + base64.b64encode(zlib.compress(body.encode("utf-8"), 6)).decode("ascii")


def _unpack(stored: str) -> str:
    if stored.startswith("z:"):
        return zlib.decompress(base64.b64decode(stored[2:])).decode("utf-8")
    return stored
