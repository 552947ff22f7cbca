"""The replication handler against kinesis-local: a simulated ledger replicated to two "regions"
(separate streams on one kinesis-local), compared record for record with the source.

A region outage is a real network fault: each "regional" endpoint can be reached through a
:class:`Link`, a TCP forwarder on 127.0.0.1 that can be cut (connections refused and reset) and
restored. Time in the pipeline and the handler is a fake clock; only the servers are real.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from qldbstream_handlers.replication import ReplicationHandler, ShardMap
from qldbstream_tools.simulate import Simulation

from qldbstream.api.metrics import InMemoryMetrics
from qldbstream.cli.dr_check import Copy, compare, scan
from qldbstream.core.deaggregate import KPL_MAGIC, deaggregate
from qldbstream.core.decode import RecordType, RevisionDetails, decode
from qldbstream.core.records import KinesisRecord
from qldbstream.io.kinesis_reader import read_stream
from qldbstream.io.kinesis_writer import PutEntry, create_stream, put_records
from qldbstream.pipeline.batch import BatchResult, Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.support.aws import REGION, client
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.servers import LocalServer
from tests.support.streams import simulation

pytestmark = pytest.mark.integration

REVISIONS = frozenset({RecordType.REVISION_DETAILS})


class Link:
    """The network path to one region: forwards 127.0.0.1:``port`` to the server; ``cut`` resets it.

    While cut, the listening socket stays bound (so no other socket can take its port) but every
    connection is reset at once, and the connections open at the time of the cut are reset too.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.up = True
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(32)
        self._server.settimeout(0.05)
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._open = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)
            self._sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self._open = False
        self._thread.join(timeout=5)
        self._server.close()

    def _accept(self) -> None:
        while self._open:
            try:
                downstream, _ = self._server.accept()
            except TimeoutError:
                continue
            if not self.up:
                _reset(downstream)
                continue
            upstream = socket.create_connection(self.upstream, timeout=5)
            with self._lock:
                self._sockets.update((downstream, upstream))
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (linger 0), as a dropped network path looks to the client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def kinesis_streams(kinesis: Any, *shard_counts: int) -> Iterator[list[str]]:
    """Short-lived streams created together (kinesis-local takes ~0.8 s per stream), deleted after."""
    names = [f"repl-{uuid.uuid4().hex[:12]}" for _ in shard_counts]
    for name, shards in zip(names, shard_counts, strict=True):
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    try:
        for name, shards in zip(names, shard_counts, strict=True):
            create_stream(kinesis, name, shards, exist_ok=True)
        yield names
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def fast_client(endpoint: str) -> Any:
    """A Kinesis client that fails at once when its region is unreachable (no botocore retries)."""
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=20),
    )


def clients_for(endpoints: dict[str, str]) -> Any:
    return lambda config: fast_client(endpoints[config.name])


def put_source(kinesis: Any, name: str, sim: Simulation) -> None:
    put_records(
        kinesis, name, [PutEntry(d.data, d.partition_key, d.explicit_hash_key) for d in sim.deliveries]
    )


def read_shards(kinesis: Any, name: str) -> dict[str, list[KinesisRecord]]:
    out: dict[str, list[KinesisRecord]] = defaultdict(list)
    for record in read_stream(kinesis, name, poll_interval=0.05):
        assert record.shard_id is not None
        out[record.shard_id].append(record)
    return dict(out)


def read_copy(kinesis: Any, name: str) -> Copy:
    return scan(Copy(name), read_stream(kinesis, name, poll_interval=0.05), types=REVISIONS)


def make_pipeline(
    handler: ReplicationHandler, t: FakeTime, store: InMemoryDedupeStore, **settings: Any
) -> Pipeline:
    return Pipeline(
        [handler],
        dlq=MemoryDLQ(),
        store=store,
        settings=PipelineSettings(
            retry=RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=1.0), **settings
        ),
        clock=t.clock,
        sleep=t.sleep,
    )


def handler_for(settings: dict[str, str], endpoints: dict[str, str], t: FakeTime) -> ReplicationHandler:
    return ReplicationHandler(settings, clients=clients_for(endpoints), clock=t.clock, sleep=t.sleep)


def run(pipeline: Pipeline, shard: str, batch: list[KinesisRecord]) -> BatchResult:
    return pipeline.process(shard, batch)


def batches(records: list[KinesisRecord], size: int) -> list[list[KinesisRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def target_revisions(kinesis: Any, name: str) -> list[tuple[str, RevisionDetails, KinesisRecord]]:
    """Every revision in a target stream: (shard, revision, the Kinesis record it came in)."""
    out = []
    for shard, records in read_shards(kinesis, name).items():
        for kr in records:
            for user in deaggregate(kr):
                record = decode(user)
                assert isinstance(record, RevisionDetails)
                out.append((shard, record, kr))
    return out


def source_revisions(sim: Simulation) -> dict[tuple[str, int], bytes]:
    return {
        (r.document_id, r.version): r.data
        for r in (decode_record(rec.data) for rec in sim.records if rec.record_type == "REVISION_DETAILS")
    }


def decode_record(data: bytes) -> RevisionDetails:
    record = decode(deaggregate(KinesisRecord(data, "1", "pk"))[0])
    assert isinstance(record, RevisionDetails)
    return record


def assert_exact_copy(kinesis: Any, name: str, sim: Simulation) -> None:
    """Every revision once, byte-identical, keyed by its document id, each document's versions in order."""
    expected = {(r.document_id, r.version): r.raw for r in map(decode_record, revision_bytes(sim))}
    got = target_revisions(kinesis, name)
    counts = Counter((r.document_id, r.version) for _, r, _ in got)
    assert set(counts) == set(expected) and set(counts.values()) == {1}
    versions: dict[str, list[int]] = defaultdict(list)
    shards: dict[str, set[str]] = defaultdict(set)
    for shard, r, kr in got:
        assert r.raw == expected[(r.document_id, r.version)]
        assert kr.partition_key == r.document_id
        versions[r.document_id].append(r.version)
        shards[r.document_id].add(shard)
    assert all(v == sorted(v) for v in versions.values())
    assert all(len(s) == 1 for s in shards.values())


def has_revision(kr: KinesisRecord) -> bool:
    return any(isinstance(decode(u), RevisionDetails) for u in deaggregate(kr))


def revision_bytes(sim: Simulation) -> list[bytes]:
    return [rec.data for rec in sim.records if rec.record_type == "REVISION_DETAILS"]


# -- tests -------------------------------------------------------------------------------------------


def test_fanout_to_two_regions_gives_exact_copies_despite_duplicates_and_a_restart(
    kinesis_local: LocalServer,
) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    sim = simulation(26, seed=11, shards=1, aggregate=True, duplicates=0.25)
    with kinesis_streams(kinesis, 1, 2, 1) as (source, west, east):
        put_source(kinesis, source, sim)
        ((shard, records),) = read_shards(kinesis, source).items()
        settings = {"targets": "west,east", "west_stream": west, "east_stream": east}
        endpoints = {"west": kinesis_local.endpoint, "east": kinesis_local.endpoint}
        t, store, metrics = FakeTime(), InMemoryDedupeStore(), InMemoryMetrics()
        chunks = batches(records, 12)
        half = len(chunks) // 2
        for part in (chunks[:half], chunks[half:]):  # a clean restart: new process, shared dedupe store
            handler = handler_for(settings, endpoints, t)
            pipeline = Pipeline(
                [handler], dlq=MemoryDLQ(), store=store, metrics=metrics, clock=t.clock, sleep=t.sleep
            )
            for batch in part:
                result = pipeline.process(shard, batch)
                assert (not result.halted and result.checkpoint == (batch[-1].sequence_number, 0)) or (
                    result.checkpoint is not None and result.checkpoint[0] == batch[-1].sequence_number
                )
            handler.close()
        assert sum(d.duplicate for d in sim.deliveries) > 0
        revisions = len(revision_bytes(sim))
        assert metrics.total("replication_records", target="west") == revisions
        assert metrics.total("replication_records", target="east") == revisions
        assert metrics.samples[("replication_put_latency", (("target", "west"),))]
        for name in (west, east):
            assert_exact_copy(kinesis, name, sim)

        # A crash between the put and the checkpoint: the last batch comes back to a new process whose
        # de-duplication marks were never written. The re-put copies are byte-identical duplicates.
        crashed = handler_for(settings, endpoints, t)
        Pipeline(
            [crashed], dlq=MemoryDLQ(), store=InMemoryDedupeStore(), clock=t.clock, sleep=t.sleep
        ).process(shard, chunks[-1])
        source_copy = read_copy(kinesis, source)
        for name in (west, east):
            report = compare(source_copy, read_copy(kinesis, name))
            assert report["ok"], report
            assert report["matched"] == revisions and report["duplicates"] > 0


def test_kpl_reaggregation_round_trips_and_routes_each_user_record_by_document(
    kinesis_local: LocalServer,
) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    sim = simulation(30, seed=12, shards=2, aggregate=True)
    with kinesis_streams(kinesis, 2, 3) as (source, target):
        put_source(kinesis, source, sim)
        handler = handler_for(
            {"targets": "west", "west_stream": target, "aggregate": "true"},
            {"west": kinesis_local.endpoint},
            FakeTime(),
        )
        # with two source shards read one after the other, a document's older revisions arrive
        # after newer ones were written: the target keeps each document's versions in order, so
        # those are skipped (counted), never written after the newer ones
        from tests.handlers.messy import skipped_after_flush

        t = FakeTime()
        pipeline = make_pipeline(handler, t, InMemoryDedupeStore())
        delivered: list[list[Any]] = []
        for shard, records in read_shards(kinesis, source).items():
            for batch in batches(records, 10):
                assert not pipeline.process(shard, batch).halted
                delivered.append([decode(u) for kr in batch for u in deaggregate(kr)])
        skipped = skipped_after_flush(delivered, handler.wants)
        shards = kinesis.list_shards(StreamName=target)["Shards"]
        shard_map = ShardMap(
            [
                (
                    int(s["HashKeyRange"]["StartingHashKey"]),
                    int(s["HashKeyRange"]["EndingHashKey"]),
                    s["ShardId"],
                )
                for s in shards
            ]
        )
        got = target_revisions(kinesis, target)
        assert {kr.data[:4] for _, _, kr in got} == {KPL_MAGIC}
        assert len({kr.sequence_number for _, _, kr in got}) < len(
            got
        )  # several user records per Kinesis record
        for shard, record, _ in got:
            assert shard == shard_map.shard_for(record.document_id)
        expected = {(r.document_id, r.version): r.raw for r in map(decode_record, revision_bytes(sim))}
        assert skipped and skipped < set(expected)
        assert {(r.document_id, r.version): r.raw for _, r, _ in got} == {
            k: v for k, v in expected.items() if k not in skipped
        }
        assert len(got) == len(expected) - len(skipped)
        report = compare(read_copy(kinesis, source), read_copy(kinesis, target))
        assert report["counts"]["missing"] == len(skipped)  # dr-check sees the skipped versions
        counts = report["counts"]
        assert counts["mismatched"] == counts["extra"] == counts["outOfOrder"] == 0
        assert report["checks"]["V2"]["failed"] == 0 and report["checks"]["V2"]["passed"] > 0


def test_an_outage_fails_over_to_the_secondary_and_back_with_metrics(kinesis_local: LocalServer) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    sim = simulation(36, seed=13, shards=1, aggregate=True)
    link = Link(kinesis_local.endpoint)
    try:
        with kinesis_streams(kinesis, 1, 1, 1) as (source, west, east):
            put_source(kinesis, source, sim)
            ((shard, records),) = read_shards(kinesis, source).items()
            t, metrics = FakeTime(), InMemoryMetrics()
            settings = {
                "targets": "west,east",
                "west_stream": west,
                "east_stream": east,
                "mode": "failover",
                "failover_threshold": "2",
                "health_check_interval": "30",
            }
            handler = handler_for(settings, {"west": link.endpoint, "east": kinesis_local.endpoint}, t)
            pipeline = make_pipeline(handler, t, InMemoryDedupeStore())
            pipeline.metrics = metrics
            chunks = batches(records, 9)
            thirds = [
                chunks[: len(chunks) // 3],
                chunks[len(chunks) // 3 : 2 * len(chunks) // 3],
                chunks[2 * len(chunks) // 3 :],
            ]
            for batch in thirds[0]:
                assert not pipeline.process(shard, batch).halted
            assert handler.status()["active"] == "west"
            link.cut()  # the west region goes away
            for batch in thirds[1]:
                result = pipeline.process(shard, batch)
                assert not result.halted and result.checkpoint is not None
            assert handler.status()["active"] == "east"
            assert (
                metrics.total("replication_failovers", kind="failover", from_target="west", to_target="east")
                == 1
            )
            assert metrics.gauges[("replication_target_healthy", (("target", "west"),))] == 0.0
            assert metrics.total("replication_put_failures", target="west") == 2
            link.restore()
            t.now += 31  # the next health probe is due
            for batch in thirds[2]:
                assert not pipeline.process(shard, batch).halted
            assert handler.status()["active"] == "west"
            assert metrics.total("replication_failovers", kind="failback") == 1
            assert metrics.gauges[("replication_target_healthy", (("target", "west"),))] == 1.0
            assert metrics.total("replication_probes", target="west", outcome="ok") >= 1

            # Together the two regions hold one complete copy; each alone does not.
            source_copy = read_copy(kinesis, source)
            west_copy, east_copy = read_copy(kinesis, west), read_copy(kinesis, east)
            union = Copy("union")
            scan(union, read_stream(kinesis, west, poll_interval=0.05), types=REVISIONS, label="west/")
            scan(union, read_stream(kinesis, east, poll_interval=0.05), types=REVISIONS, label="east/")
            assert compare(source_copy, union)["ok"]
            assert compare(source_copy, west_copy)["counts"]["missing"] > 0
            assert compare(source_copy, east_copy)["counts"]["missing"] > 0
            written = metrics.total("replication_records")
            assert written >= len(revision_bytes(sim))
    finally:
        link.close()


def test_no_healthy_target_holds_the_checkpoint_and_nothing_is_lost(kinesis_local: LocalServer) -> None:
    kinesis = client("kinesis", kinesis_local.endpoint)
    sim = simulation(12, seed=14, shards=1, aggregate=True)
    west_link, east_link = Link(kinesis_local.endpoint), Link(kinesis_local.endpoint)
    try:
        with kinesis_streams(kinesis, 1, 1, 1) as (source, west, east):
            put_source(kinesis, source, sim)
            ((shard, records),) = read_shards(kinesis, source).items()
            t = FakeTime()
            settings = {
                "targets": "west,east",
                "west_stream": west,
                "east_stream": east,
                "failover_threshold": "2",
                "health_check_interval": "10",
            }
            handler = handler_for(settings, {"west": west_link.endpoint, "east": east_link.endpoint}, t)
            pipeline = make_pipeline(handler, t, InMemoryDedupeStore())

            west_link.cut()  # fanout: one region down holds the checkpoint; the other keeps its copy
            result = pipeline.process(shard, records)
            # the records before the first revision (CONTROL, DDL blocks) are not the handler's: finished
            first = next(i for i, kr in enumerate(records) if has_revision(kr))
            sub = next(
                i for i, u in enumerate(deaggregate(records[first])) if isinstance(decode(u), RevisionDetails)
            )
            assert result.halted and result.first_unfinished is records[first]
            assert result.checkpoint is not None
            assert (int(result.checkpoint[0]), result.checkpoint[1]) < (
                int(records[first].sequence_number),
                sub,
            )
            assert "replication" in result.halt_reason and t.slept
            assert handler.status()["pending"]["west"] > 0 and handler.status()["pending"]["east"] == 0
            east_revisions = len(target_revisions(kinesis, east))
            assert east_revisions == len(revision_bytes(sim))

            east_link.cut()  # now no region at all: still nothing moves
            result = pipeline.process(shard, records)
            assert result.halted and result.first_unfinished is records[first]
            assert not handler.status()["targets"]["west"]["healthy"]

            west_link.restore()
            east_link.restore()
            t.now += 10
            result = pipeline.process(shard, records)  # the runtime redelivers from the checkpoint
            assert not result.halted and result.checkpoint is not None
            assert result.checkpoint[0] == records[-1].sequence_number
            for name in (west, east):  # each exactly once: east did not get the batch again
                assert_exact_copy(kinesis, name, sim)
    finally:
        west_link.close()
        east_link.close()
