"""Replication on a messy source: four shards, duplicates, reordering, shards read far apart.

Whatever the delivery, each target must hold every document's versions in increasing version
order (a version older than one already written is skipped and counted, never written after it),
and every revision of the ledger must be either on the target or counted as skipped. The
expected set of skipped revisions is computed here from the order in which the test delivered the
revisions, not from the handler. Targets are in-memory fakes of ``PutRecords`` that fail some
entries, as Kinesis does under throttling.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from qldbstream_handlers.replication import ReplicationHandler, TargetConfig

from qldbstream.api.handler import HandlerContext
from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.core.decode import RevisionDetails, decode_bytes
from qldbstream.core.records import Position
from tests.handlers.messy import (
    Batch,
    Delivery,
    deliver,
    round_robin,
    shard_by_shard,
    shard_records,
    skipped_after_flush,
)
from tests.support.streams import simulation

TARGETS = {"targets": "west,eu", "west_stream": "dr-west", "eu_stream": "dr-eu"}


class FakeKinesis:
    """``PutRecords`` into a list (in write order); an entry fails with probability ``flaky`` the
    first time it is put (throttled), so the handler's retry of the failed entries succeeds."""

    def __init__(self, flaky: float = 0.0, seed: int = 0) -> None:
        self.written: list[tuple[str, bytes]] = []
        self.flaky = flaky
        self.rng = random.Random(seed)
        self.down = False
        self._failed: set[bytes] = set()

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("region unreachable")
        out: list[dict[str, Any]] = []
        for entry in Records:
            if entry["Data"] not in self._failed and self.rng.random() < self.flaky:
                self._failed.add(entry["Data"])
                out.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"})
            else:
                self.written.append((entry["PartitionKey"], entry["Data"]))
                out.append({"ShardId": "shardId-000000000000", "SequenceNumber": str(len(self.written))})
        return {"FailedRecordCount": sum("ErrorCode" in o for o in out), "Records": out}

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("region unreachable")
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}

    def versions(self) -> dict[str, list[int]]:
        """Each document's versions in the order the target received them."""
        out: dict[str, list[int]] = defaultdict(list)
        for key, data in self.written:
            record = decode_bytes(data, Position("target"))
            assert isinstance(record, RevisionDetails) and record.document_id == key
            out[key].append(record.version)
        return dict(out)


def handler(fakes: dict[str, FakeKinesis], **settings: str) -> ReplicationHandler:
    def clients(config: TargetConfig) -> Any:
        return fakes[config.name]

    return ReplicationHandler({**TARGETS, **settings}, clients=clients, sleep=lambda _s: None)


def expected_skips(work: Sequence[Batch], h: ReplicationHandler) -> set[tuple[str, int]]:
    """The revisions a target must not get: those delivered after a newer version of the same
    document was written (flushed in an earlier batch), worked out from the order of ``work``
    alone. (A newer version earlier in the *same* batch is not written yet: the older goes first.)"""
    return skipped_after_flush([records for _shard, records in work], h.wants)


MESSY = {"shards": 4, "aggregate": False, "duplicates": 0.3, "reorder": 6}


@pytest.mark.parametrize("order", ["round-robin", "shard-by-shard", "reversed-shards"])
def test_every_target_holds_each_documents_versions_in_order(order: str) -> None:
    sim = simulation(150, seed=5, redactions=0, **MESSY)  # type: ignore[arg-type]
    per_shard = shard_records(sim)
    work = {
        "round-robin": lambda: round_robin(per_shard, 7),
        "shard-by-shard": lambda: shard_by_shard(per_shard, 7),
        "reversed-shards": lambda: shard_by_shard(per_shard, 7, reverse=True),
    }[order]()
    fakes = {"west": FakeKinesis(flaky=0.2, seed=1), "eu": FakeKinesis(flaky=0.05, seed=2)}
    h = handler(fakes)
    metrics = deliver(h, work)

    ledger = {(r.document_id, r.version) for r in sim.ledger.revisions}
    multi_version = {d for d, v in ledger if v > 0}
    assert len(multi_version) >= 20  # documents with several versions scattered over the shards
    skipped = expected_skips(work, h)
    if order != "round-robin":
        assert skipped  # shards read apart: older versions do come after newer ones
    for name, fake in fakes.items():
        versions = fake.versions()
        for doc, seq in versions.items():
            assert seq == sorted(set(seq)), f"{name}: {doc} written as versions {seq}"
        written = {(doc, v) for doc, seq in versions.items() for v in seq}
        assert written == ledger - skipped, name
        assert metrics.total("replication_late_skipped", target=name) == len(skipped)
        assert h.status()["lateSkipped"][name] == len(skipped)
        assert not h.lanes[name].pending


def test_a_batch_holding_version_two_before_version_one_writes_one_first() -> None:
    sim = simulation(40, seed=2, redactions=0)
    records = [r for rs in shard_records(sim).values() for r in rs if isinstance(r, RevisionDetails)]
    doc = next(r.document_id for r in records if r.version == 2)
    mine = sorted((r for r in records if r.document_id == doc), key=lambda r: -r.version)
    assert {0, 1, 2} <= {r.version for r in mine}
    fakes = {"west": FakeKinesis(flaky=0.3), "eu": FakeKinesis()}
    h = handler(fakes)
    metrics = deliver(h, [("shardId-000000000000", list(mine))])  # newest first, none flushed yet
    for fake in fakes.values():
        assert fake.versions()[doc] == sorted(r.version for r in mine)
    assert metrics.total("replication_late_skipped") == 0


def test_a_target_that_was_down_gets_its_backlog_in_version_order() -> None:
    """Fanout: ``eu`` is down while ``west`` takes version 2; version 1 arrives (not late: the
    checkpoint held, nothing was committed); ``west`` must skip it, ``eu`` must get 1 then 2."""
    sim = simulation(40, seed=2, redactions=0)
    records = [r for rs in shard_records(sim).values() for r in rs if isinstance(r, RevisionDetails)]
    doc = next(r.document_id for r in records if r.version == 2)
    by_version = {r.version: r for r in records if r.document_id == doc}
    fakes = {"west": FakeKinesis(), "eu": FakeKinesis()}
    fakes["eu"].down = True
    h = handler(fakes, failover_threshold="1", health_check_interval="0")
    metrics = InMemoryMetrics()
    ctx = HandlerContext(h.name, "shardId-000000000001", metrics=metrics)
    h.handle_batch([by_version[2]], ctx)
    with pytest.raises(Exception, match="eu"):
        h.flush(ctx)
    h.handle_batch([by_version[1], by_version[0]], ctx)
    fakes["eu"].down = False
    h.flush(ctx)
    assert fakes["west"].versions()[doc] == [2]
    assert fakes["eu"].versions()[doc] == [0, 1, 2]
    assert metrics.total("replication_late_skipped", target="west") == 2
    assert metrics.total("replication_late_skipped", target="eu") == 0


def test_late_policy_setting_is_declared_to_the_pipeline() -> None:
    fakes = {"west": FakeKinesis(), "eu": FakeKinesis()}
    assert handler(fakes).late_policy == "deliver-late"
    assert handler(fakes, late_policy="reorder").late_policy == "reorder"
    from qldbstream.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="late_policy"):
        handler(fakes, late_policy="drop")


def test_delivery_emulation_flags_late_revisions_like_the_pipeline() -> None:
    """The test harness itself: a version at or below the highest delivered one is late."""
    sim = simulation(40, seed=2, redactions=0)
    records = [r for rs in shard_records(sim).values() for r in rs if isinstance(r, RevisionDetails)]
    doc = next(r.document_id for r in records if r.version == 2)
    by_version = {r.version: r for r in records if r.document_id == doc}
    delivery = Delivery()
    h = handler({"west": FakeKinesis(), "eu": FakeKinesis()})
    got, late = delivery.plan(h, [by_version[1], by_version[2], by_version[0], by_version[1]])
    assert [r.version for r in got] == [1, 2, 0] and late == {2}  # type: ignore[attr-defined]
    delivery.commit(got)
    got, late = delivery.plan(h, [by_version[0]])
    assert got == [] and late == frozenset()  # already delivered: a duplicate, not late
    assert TargetConfig("x", "s").describe().startswith("x")
