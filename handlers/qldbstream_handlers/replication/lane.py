"""A lane: the records still to write to one target (fanout) or to any target (failover).

A lane keeps stream order except that each document's revisions are written in version order, and
it remembers what it wrote (the keys, and the highest version per document) so that a batch that
comes back after a failed flush, or a revision older than one already written, is not written again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from qldbstream_handlers.replication.rounds import Outgoing
from qldbstream_handlers.replication.target import HighestVersions, RecentKeys

__all__ = ["Lane"]


class Lane:
    """Records still to write to one target (fanout) or to any target (failover), in stream order."""

    def __init__(self, name: str, sent_cache_size: int) -> None:
        self.name = name
        self.pending: OrderedDict[str, Outgoing] = OrderedDict()
        self.sent = RecentKeys(sent_cache_size)
        #: document -> highest version this lane wrote (an older one is never written after it)
        self.written = HighestVersions(sent_cache_size)
        #: revisions not written because a newer version of their document was written first
        self.late_skipped = 0

    def add(self, item: Outgoing) -> bool:
        """Buffer ``item`` unless this lane already wrote it (or a newer version of its document);
        a key already buffered keeps its place."""
        if item.key in self.sent:
            return False
        if item.document_id is not None and item.version is not None:
            highest = self.written.get(item.document_id)
            if highest is not None and item.version <= highest:
                if item.version < highest:
                    self.late_skipped += 1
                return False
        self.pending[item.key] = item
        return True

    def skip_late(self) -> None:
        """A revision the pipeline flagged late: a newer version is already on the target."""
        self.late_skipped += 1

    def ordered(self) -> list[Outgoing]:
        """The pending records in stream order, except that each document's revisions take the
        places of its revisions in version order."""
        items = list(self.pending.values())
        by_doc: dict[str, list[Outgoing]] = {}
        for item in items:
            if item.document_id is not None and item.version is not None:
                by_doc.setdefault(item.document_id, []).append(item)
        if all(len(v) == 1 for v in by_doc.values()):
            return items
        queues = {doc: sorted(v, key=lambda i: i.version or 0) for doc, v in by_doc.items()}
        out = []
        for item in items:
            if item.document_id is not None and item.version is not None:
                out.append(queues[item.document_id].pop(0))
            else:
                out.append(item)
        return out

    def done(self, keys: Sequence[str]) -> None:
        for key in keys:
            item = self.pending.pop(key, None)
            if item is not None and item.document_id is not None and item.version is not None:
                self.written.record(item.document_id, item.version)
        self.sent.add(keys)

    def drop_shard(self, shard_id: str) -> int:
        stale = [k for k, item in self.pending.items() if item.shard_id == shard_id]
        for key in stale:
            del self.pending[key]
        return len(stale)
