"""One replication target: its Kinesis client, health, shard map, and the puts and probes to it.

Metrics (dimension ``target``; the handler adds ``replication_failovers``):

=================================  =========  ==================================================
``replication_records``            counter    user records written to the target
``replication_kinesis_records``    counter    Kinesis records written (aggregates count once)
``replication_put_latency``        sample     seconds per ``PutRecords`` round (retries included)
``replication_put_failures``       counter    rounds that failed (``error`` = exception class)
``replication_probes``             counter    health probes (``outcome`` = ``ok`` / ``failed``)
``replication_target_healthy``     gauge      1 healthy, 0 unhealthy
=================================  =========  ==================================================
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qldbstream.api import Metrics, NullMetrics
from qldbstream.api.kinesis import put_records
from qldbstream_handlers.replication.health import TargetHealth
from qldbstream_handlers.replication.rounds import Round, ShardMap
from qldbstream_handlers.replication.settings import TargetConfig

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

__all__ = ["HighestVersions", "RecentKeys", "Target"]

log = logging.getLogger("qldbstream.handler.replication")

#: stream states in which PutRecords is accepted
_WRITABLE = frozenset({"ACTIVE", "UPDATING"})


class RecentKeys:
    """A bounded set of the keys most recently written (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, keys: Iterable[str]) -> None:
        if self.size == 0:
            return
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class HighestVersions:
    """The highest version written per document, for the ``size`` documents written most recently.

    A document forgotten here (more than ``size`` documents written since) is still protected by the
    pipeline's own late check (``ctx.late``): this is the lane's second line of defence.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._versions: OrderedDict[str, int] = OrderedDict()

    def get(self, document_id: str) -> int | None:
        return self._versions.get(document_id)

    def record(self, document_id: str, version: int) -> None:
        if self.size == 0:
            return
        current = self._versions.get(document_id)
        self._versions[document_id] = version if current is None else max(current, version)
        self._versions.move_to_end(document_id)
        while len(self._versions) > self.size:
            self._versions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._versions)


class Target:
    """A target stream and everything the handler knows about it."""

    def __init__(
        self,
        config: TargetConfig,
        client: KinesisClient,
        health: TargetHealth,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        put_attempts: int = 4,
        shard_map_ttl: float = 60.0,
    ) -> None:
        self.config = config
        self.client = client
        self.health = health
        self.clock = clock
        self.sleep = sleep
        self.put_attempts = put_attempts
        self.shard_map_ttl = shard_map_ttl
        self.metrics: Metrics = NullMetrics()
        self._shard_map: ShardMap | None = None
        self._shard_map_at = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    # --- probes --------------------------------------------------------------------------
    def probe(self) -> bool:
        """``DescribeStreamSummary``: the stream exists and accepts writes. Updates the health."""
        now = self.clock()
        try:
            summary = self.client.describe_stream_summary(StreamName=self.config.stream)
            status = summary["StreamDescriptionSummary"]["StreamStatus"]
            if status not in _WRITABLE:
                raise RuntimeError(f"stream status is {status}")
        except Exception as exc:  # any failure to answer is a failed probe
            self.health.record_failure(now, f"probe: {exc!r}")
            self.metrics.incr("replication_probes", target=self.name, outcome="failed")
            log.warning("replication target %s: health probe failed: %r", self.name, exc)
            return False
        self.health.record_success(now, probe=True)
        self.metrics.incr("replication_probes", target=self.name, outcome="ok")
        return True

    def usable(self) -> bool:
        """Healthy (probed first when a check is due), or unhealthy but a due probe just passed."""
        if self.health.check_due(self.clock()):
            self.probe()
        return self.health.healthy

    # --- puts ----------------------------------------------------------------------------
    def shard_map(self) -> ShardMap:
        """The open shards (``ListShards``), cached for ``shard_map_ttl`` seconds."""
        now = self.clock()
        if self._shard_map is None or now - self._shard_map_at >= self.shard_map_ttl:
            self._shard_map = self._list_shards()
            self._shard_map_at = now
        return self._shard_map

    def _list_shards(self) -> ShardMap:
        ranges: list[tuple[int, int, str]] = []
        kwargs: dict[str, Any] = {"StreamName": self.config.stream}
        while True:
            page = self.client.list_shards(**kwargs)
            for shard in page["Shards"]:
                if shard["SequenceNumberRange"].get("EndingSequenceNumber") is None:
                    r = shard["HashKeyRange"]
                    ranges.append((int(r["StartingHashKey"]), int(r["EndingHashKey"]), shard["ShardId"]))
            token = page.get("NextToken")
            if not token:
                return ShardMap(ranges)
            kwargs = {"NextToken": token}

    def put_round(self, round_: Round) -> None:
        """Write one round (``PutRecords`` with retries); raise when it could not be written."""
        started = self.clock()
        try:
            put_records(
                self.client,
                self.config.stream,
                round_.entries,
                sleep=self.sleep,
                max_attempts=self.put_attempts,
            )
        except Exception as exc:
            self._shard_map = None  # a reshard is one reason puts fail: list the shards again
            self.health.record_failure(self.clock(), f"put: {exc!r}")
            self.metrics.incr("replication_put_failures", target=self.name, error=type(exc).__name__)
            raise
        now = self.clock()
        self.health.record_success(now)
        self.metrics.observe("replication_put_latency", now - started, target=self.name)
        self.metrics.incr("replication_records", round_.user_records, target=self.name)
        self.metrics.incr("replication_kinesis_records", len(round_.entries), target=self.name)

    def __repr__(self) -> str:
        return f"Target({self.config.describe()}, {self.health!r})"
