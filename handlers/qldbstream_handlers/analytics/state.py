"""Where the analytics handler checkpoints its window state: in memory, or in a DynamoDB table.

The state (open windows' partial aggregates and event keys, each shard's newest event time, the
watermark) is saved in ``flush`` - after the results were written, before the runtime moves its
checkpoint - so a restarted worker resumes with exactly what the records before its checkpoint
contributed. It is one gzip-compressed JSON document per key (the handler's name, plus the shard
in ``scope = shard``). Windows that leave memory are stored under their own keys (``<state
key>#pane#<query>#<start>#<end>``) so that a late event can bring them back; in ``scope = shard``
these are also each shard's *part* of a window, listed in a *members* item per window
(``members#<name>#<query>#<start>#<end>``: part -> revision), which every shard reads to write
the union of all parts.

:class:`DynamoDBStateStore` splits a document into chunks under 350 KB (an item holds at most
400 KB), written under a fresh writer id, and switches to the new *generation* with one conditional
write of the ``head`` item (``generation = :old``), so a reader never sees half a state, and a second
consumer writing the same key is detected: its write fails with
:class:`~qldbstream.core.errors.HaltShardError` (two consumers must not share window state) and its
chunks never mix with the winner's.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from qldbstream.api import HaltShardError

__all__ = ["DynamoDBStateStore", "InMemoryStateStore", "StateStore", "decode_state", "encode_state"]

CHUNK_BYTES = 350_000


class StateStore(Protocol):
    """Blobs by key (this consumer's own: window state, archived windows, its parts), plus what
    ``scope = shard`` needs to unite the shards' parts of a window: reading another consumer's
    blob without touching it, and a *members* index (part name -> part revision) per window."""

    def load(self, key: str) -> bytes | None:
        """The last state saved under ``key`` (``None``: never saved)."""
        ...

    def save(self, key: str, blob: bytes) -> None:
        """Replace the state under ``key`` atomically."""
        ...

    def read(self, key: str) -> bytes | None:
        """Like :meth:`load`, for a key another consumer writes: no side effects."""
        ...

    def delete(self, key: str) -> None:
        """Forget ``key`` (a stored window that expired)."""
        ...

    def set_member(self, group: str, member: str, revision: int) -> None:
        """Record that ``member`` (a part) of ``group`` is at ``revision`` (never lowered)."""
        ...

    def members(self, group: str) -> dict[str, int]:
        """Every member of ``group`` and its revision (strongly consistent)."""
        ...


def _chunk_prefix(generation: int, writer: str) -> str:
    return f"chunk#{generation:012d}#{writer}#"


def encode_state(state: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(state, sort_keys=True, separators=(",", ":")).encode(), mtime=0)


def decode_state(blob: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(gzip.decompress(blob))
    return value


class InMemoryStateStore:
    """A dict of blobs: for tests, and for a single process that accepts losing state on restart."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.groups: dict[str, dict[str, int]] = {}
        self.saves = 0

    def load(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def save(self, key: str, blob: bytes) -> None:
        self.blobs[key] = blob
        self.saves += 1

    def read(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def set_member(self, group: str, member: str, revision: int) -> None:
        members = self.groups.setdefault(group, {})
        members[member] = max(revision, members.get(member, revision))

    def members(self, group: str) -> dict[str, int]:
        return dict(self.groups.get(group, {}))


class DynamoDBStateStore:
    """Chunked, generation-switched state in a table with keys ``pk`` (S) and ``sk`` (S)."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table
        #: key -> generation this process last read or wrote (the condition of the next write)
        self._generation: dict[str, int] = {}
        #: key -> (sort-key prefix, count) of the current chunks (deleted after the next switch)
        self._chunks: dict[str, tuple[str, int]] = {}

    @staticmethod
    def create_table(client: Any, table: str) -> None:
        """Create the table (on-demand billing) and wait for it; an existing table is fine."""
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table,
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        client.get_waiter("table_exists").wait(TableName=table)

    def _query(self, pk: str) -> Iterator[dict[str, Any]]:
        """Every item of one partition, page by page (strongly consistent)."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**request)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _items(self, key: str) -> list[dict[str, Any]]:
        return list(self._query(f"state#{key}"))

    def read(self, key: str) -> bytes | None:
        """Another writer's current state: the head's chunks, read again if a switch raced us."""
        for _ in range(5):
            items = self._items(key)
            head = next((i for i in items if i["sk"]["S"] == "head"), None)
            if head is None:
                return None
            prefix = _chunk_prefix(int(head["generation"]["N"]), head["writer"]["S"])
            chunks = sorted((i for i in items if i["sk"]["S"].startswith(prefix)), key=lambda i: i["sk"]["S"])
            if len(chunks) == int(head["chunks"]["N"]):
                return b"".join(bytes(c["data"]["B"]) for c in chunks)
        raise HaltShardError(f"analytics state {key}: its chunks keep changing while being read")

    def delete(self, key: str) -> None:
        for item in self._items(key):
            self.client.delete_item(TableName=self.table, Key={"pk": item["pk"], "sk": item["sk"]})
        self._generation.pop(key, None)
        self._chunks.pop(key, None)

    def set_member(self, group: str, member: str, revision: int) -> None:
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.put_item(
                TableName=self.table,
                Item={
                    "pk": {"S": f"members#{group}"},
                    "sk": {"S": member},
                    "revision": {"N": str(revision)},
                },
                ConditionExpression="attribute_not_exists(pk) OR revision <= :revision",
                ExpressionAttributeValues={":revision": {"N": str(revision)}},
            )

    def members(self, group: str) -> dict[str, int]:
        return {item["sk"]["S"]: int(item["revision"]["N"]) for item in self._query(f"members#{group}")}

    def load(self, key: str) -> bytes | None:
        items = self._items(key)
        head = next((i for i in items if i["sk"]["S"] == "head"), None)
        if head is None:
            self._generation[key], self._chunks[key] = 0, ("", 0)
            return None
        generation, count = int(head["generation"]["N"]), int(head["chunks"]["N"])
        prefix = _chunk_prefix(generation, head["writer"]["S"])
        self._generation[key], self._chunks[key] = generation, (prefix, count)
        chunks = sorted((i for i in items if i["sk"]["S"].startswith(prefix)), key=lambda i: i["sk"]["S"])
        if len(chunks) != count:
            raise HaltShardError(
                f"analytics state {key}: generation {generation} has {len(chunks)} of {count} chunks"
            )
        for stale in items:  # chunks that never became (or no longer are) the head's
            sk = stale["sk"]["S"]
            if sk.startswith("chunk#") and not sk.startswith(prefix):
                self.client.delete_item(TableName=self.table, Key={"pk": stale["pk"], "sk": stale["sk"]})
        return b"".join(bytes(c["data"]["B"]) for c in chunks)

    def save(self, key: str, blob: bytes) -> None:
        if key not in self._generation:
            self.load(key)
        old = self._generation[key]
        new = old + 1
        writer = uuid.uuid4().hex  # chunks of a writer that loses the race never mix with the winner's
        prefix = _chunk_prefix(new, writer)
        pk = {"S": f"state#{key}"}
        pieces = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        for n, piece in enumerate(pieces):
            self.client.put_item(
                TableName=self.table, Item={"pk": pk, "sk": {"S": f"{prefix}{n:05d}"}, "data": {"B": piece}}
            )
        condition = "attribute_not_exists(pk)" if old == 0 else "generation = :old"
        request: dict[str, Any] = {
            "TableName": self.table,
            "Item": {
                "pk": pk,
                "sk": {"S": "head"},
                "generation": {"N": str(new)},
                "writer": {"S": writer},
                "chunks": {"N": str(len(pieces))},
            },
            "ConditionExpression": condition,
        }
        if old:
            request["ExpressionAttributeValues"] = {":old": {"N": str(old)}}
        try:
            self.client.put_item(**request)
        except self.client.exceptions.ConditionalCheckFailedException:
            for n in range(len(pieces)):
                self.client.delete_item(TableName=self.table, Key={"pk": pk, "sk": {"S": f"{prefix}{n:05d}"}})
            raise HaltShardError(
                f"analytics state {key} was written by another consumer (expected generation {old}); "
                "two consumers must not share window state (use scope = shard for several)"
            ) from None
        stale_prefix, stale_count = self._chunks.get(key, ("", 0))
        self._generation[key], self._chunks[key] = new, (prefix, len(pieces))
        for n in range(stale_count):  # a crash here leaves orphans; the next load deletes them
            self.client.delete_item(
                TableName=self.table, Key={"pk": pk, "sk": {"S": f"{stale_prefix}{n:05d}"}}
            )
