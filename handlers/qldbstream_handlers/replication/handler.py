"""The replication handler: republish verified journal records to Kinesis streams in other regions.

``handle_batch`` only buffers; ``flush`` - which the pipeline calls before every checkpoint -
writes. If ``flush`` raises, the checkpoint does not move and the batch comes back later, so a
record is never lost. What is written is each user record's Ion bytes exactly as received, with
the document id as the partition key (one document, one shard, its versions in order); block
summaries and CONTROL records keep the partition key QLDB gave them.

**Masking** (``QLDBSTREAM_MASKING``): no personal data reaches a target in clear. Revisions are
written in the *masked form* (:mod:`qldbstream.core.replica`: QLDB's redacted form plus the masked
document, still verifiable), unless ``raw_copy_kms_key_id`` asks for the original bytes, which are
then *sealed* (encrypted under a KMS data key, one per target and flush) - whatever the masking.

Buffers are *lanes* of records still to write: one per target in ``fanout`` mode (each target
keeps its own progress, so a target that was down gets the backlog without the others getting
duplicates), a single one in ``failover`` mode (a record must reach one target: the active one).

Duplicates: a crash between a put and the checkpoint re-puts the records of the batch. They are
byte-identical to the first copy, so a consumer of the target (qldbstream itself, verifying and
de-duplicating by ``(documentId, version)``) drops them. Within one process, every lane
remembers the keys it wrote (``sent_cache_size``) and skips them when a batch comes back after a
failed flush.

**Version order.** The target holds each document's versions in increasing version order:

* a lane writes the revisions it buffered with each document's versions sorted (a batch, or the
  backlog of a target that was down, may hold version 2 before version 1: 1 goes first);
* a revision older than one already written is **not written** (``replication_late_skipped``, a
  warning naming it): Kinesis is append-only, so it could only land *after* the newer version. It
  is recognised by the pipeline's late flag (``ctx.late``: a newer version of the document was
  delivered and flushed, so it is on the targets) and by the lane's own record of the highest
  version it wrote per document. ``late_policy = reorder`` makes the pipeline hold a revision whose
  predecessor is missing, so fewer revisions arrive late in the first place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qldbstream.api import (
    ConfigurationError,
    ControlRecord,
    Handler,
    HandlerContext,
    JournalRecord,
    Metrics,
    NullMetrics,
    RetryableError,
    RevisionDetails,
    SetupContext,
    dedupe_key,
)
from qldbstream.api.masking import KmsSealer, masked_record_bytes, seal_record
from qldbstream_handlers.replication.clients import (
    ClientFactory,
    KmsClientFactory,
    default_client,
    default_kms_client,
)
from qldbstream_handlers.replication.health import TargetHealth
from qldbstream_handlers.replication.lane import Lane
from qldbstream_handlers.replication.rounds import Outgoing, plan_rounds
from qldbstream_handlers.replication.settings import Mode, ReplicationSettings
from qldbstream_handlers.replication.target import Target

__all__ = [
    "ClientFactory",
    "KmsClientFactory",
    "Lane",
    "ReplicationHandler",
    "default_client",
    "default_kms_client",
]

log = logging.getLogger("qldbstream.handler.replication")


class ReplicationHandler(Handler):
    """Republishes verified revisions (and optionally block summaries / CONTROL) to target streams.

    Not a :class:`~qldbstream.api.Router`: a batch is planned and written whole (KPL aggregates
    per target shard, in rounds), not record by record; its filter is by record type and table.
    """

    name = "replication"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        clients: ClientFactory | None = None,
        kms_clients: KmsClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = ReplicationSettings.parse(settings or {})
        #: what the pipeline does with a revision older than one already delivered: ``deliver-late``
        #: (the handler sees ``ctx.late`` and skips it, counted) or ``reorder`` (held for its
        #: predecessors first); never ``drop``, which would hide the skip from this handler's metrics
        self.late_policy = self.settings.late_policy
        self._client_factory = clients or default_client
        self._kms_client_factory = kms_clients or default_kms_client
        #: target name -> its sealer (``raw_copy_kms_key_id``)
        self._sealers: dict[str, KmsSealer] = {}
        self.clock = clock
        self.sleep = sleep
        self.metrics: Metrics = NullMetrics()
        self.targets: list[Target] = []
        s = self.settings
        if s.mode is Mode.FANOUT:
            self.lanes = {t.name: Lane(t.name, s.sent_cache_size) for t in s.targets}
        else:
            self.lanes = {"active": Lane("active", s.sent_cache_size)}
        #: failover mode: the target written to last
        self.active: Target | None = None
        self.failovers = 0

    # --- lifecycle -----------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        self.metrics = ctx.metrics
        self._ensure_targets()

    def _ensure_targets(self) -> None:
        if self.targets:
            return
        s = self.settings
        for config in s.targets:
            health = TargetHealth(
                config.name,
                threshold=s.failover_threshold,
                recovery_threshold=s.recovery_threshold,
                interval=s.health_check_interval,
                on_change=self._health_changed,
            )
            try:
                client = self._client_factory(config)
            except Exception as exc:  # no region, a bad endpoint URL: refuse to start
                raise ConfigurationError(f"replication target {config.describe()}: {exc}") from exc
            target = Target(
                config,
                client,
                health,
                clock=self.clock,
                sleep=self.sleep,
                put_attempts=s.put_attempts,
                shard_map_ttl=max(s.health_check_interval, 1.0),
            )
            target.metrics = self.metrics
            self.targets.append(target)
            self.metrics.gauge("replication_target_healthy", 1.0, target=config.name)

    def _health_changed(self, health: TargetHealth) -> None:
        value = 1.0 if health.healthy else 0.0
        self.metrics.gauge("replication_target_healthy", value, target=health.name)
        if health.healthy:
            log.warning("replication target %s is healthy again", health.name)
        else:
            log.error(
                "replication target %s is unhealthy after %d failures in a row: %s",
                health.name,
                health.failures,
                health.last_error,
            )

    # --- records -------------------------------------------------------------------------
    def wants(self, record: JournalRecord) -> bool:
        s = self.settings
        if record.record_type not in s.record_types:
            return False
        if s.tables is not None and isinstance(record, RevisionDetails):
            return record.table_name in s.tables
        return True

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        #: document -> highest version seen so far in this batch (not flagged late)
        in_batch: dict[str, int] = {}
        for i, record in enumerate(records):
            revision = record if isinstance(record, RevisionDetails) else None
            item = Outgoing(
                dedupe_key(record),
                _partition_key(record),
                self._payload(record),
                ctx.shard_id,
                revision.document_id if revision is not None else None,
                revision.version if revision is not None else None,
            )
            late = False
            if revision is not None:
                newer_here = in_batch.get(revision.document_id, -1) > revision.version
                # The pipeline flags a revision late when a newer version was delivered before it,
                # in an earlier batch (flushed: it is on the targets) or earlier in this one (still
                # buffered here: the lane writes this one first, and skips it only if its own
                # record says a newer version was already written).
                late = i in ctx.late_indexes and not newer_here
                if not late:
                    in_batch[revision.document_id] = max(
                        in_batch.get(revision.document_id, -1), revision.version
                    )
            for lane in self.lanes.values():
                before = lane.late_skipped
                if late:
                    lane.skip_late()
                else:
                    lane.add(item)
                if lane.late_skipped != before:
                    ctx.metrics.incr("replication_late_skipped", target=lane.name)
                    assert revision is not None
                    log.warning(
                        "replication lane %s: %s %s version %d arrived after a newer version was "
                        "written; not replicated (the target keeps versions in order)",
                        lane.name,
                        revision.table_name,
                        revision.document_id,
                        revision.version,
                    )

    def _payload(self, record: JournalRecord) -> bytes:
        """What a target gets: the bytes as received (sealed at flush with ``raw_copy_kms_key_id``),
        or, masking on, the masked form."""
        if self.settings.raw_copy_kms_key_id or record.masker is None:
            return record.raw
        return masked_record_bytes(record)

    def shard_released(self, shard_id: str) -> None:
        """The shard's unflushed records will be redelivered to its next owner: forget them here."""
        for lane in self.lanes.values():
            dropped = lane.drop_shard(shard_id)
            if dropped:
                log.info("replication lane %s: dropped %d records of %s", lane.name, dropped, shard_id)

    # --- flush ---------------------------------------------------------------------------
    def flush(self, ctx: HandlerContext) -> None:
        """Write every lane. Raises :class:`RetryableError` (checkpoint holds) when one cannot be."""
        self._ensure_targets()
        self.metrics = ctx.metrics
        for target in self.targets:
            target.metrics = ctx.metrics
        if self.settings.mode is Mode.FANOUT:
            self._flush_fanout()
        else:
            self._flush_failover()

    def _flush_fanout(self) -> None:
        problems = []
        for target in self.targets:
            lane = self.lanes[target.name]
            if not lane.pending:
                continue
            if not target.usable():
                problems.append(f"{target.name} is unhealthy ({target.health.last_error})")
                continue
            try:
                self._write(target, lane)
            except Exception as exc:
                problems.append(f"{target.name}: {exc!r}")
        if problems:
            pending = sum(len(lane.pending) for lane in self.lanes.values())
            raise RetryableError(
                f"replication: {pending} records not yet written: " + "; ".join(problems),
                retry_after=self._next_probe_in(),
            )

    def _flush_failover(self) -> None:
        lane = self.lanes["active"]
        while lane.pending:
            target = self._choose()
            if target is None:
                states = ", ".join(f"{t.name}: {t.health.last_error or 'unhealthy'}" for t in self.targets)
                raise RetryableError(
                    f"replication: no healthy target for {len(lane.pending)} records ({states})",
                    retry_after=self._next_probe_in(),
                )
            self._switch_to(target)
            try:
                self._write(target, lane)
            except Exception as exc:
                if target.health.healthy or not self.settings.auto_failover:
                    raise RetryableError(
                        f"replication to {target.name} failed ({target.health.failures} in a row): {exc!r}",
                        retry_after=self._next_probe_in(),
                    ) from exc
                # unhealthy now: the loop moves the rest to the next healthy target

    def _choose(self) -> Target | None:
        """The target to write to: see the failover rules in the handler's documentation."""
        primary = self.targets[0]
        if not self.settings.auto_failover:
            return primary if primary.usable() else None
        if not self.settings.failback and self.active is not None and self.active.usable():
            return self.active
        for target in self.targets:
            if target.usable():
                return target
        return None

    def _switch_to(self, target: Target) -> None:
        previous = self.active
        self.active = target
        if previous is None or previous is target:
            return
        self.failovers += 1
        kind = "failback" if self.targets.index(target) < self.targets.index(previous) else "failover"
        self.metrics.incr(
            "replication_failovers", from_target=previous.name, to_target=target.name, kind=kind
        )
        log.warning("replication: %s from %s to %s", kind, previous.name, target.name)

    def _write(self, target: Target, lane: Lane) -> None:
        shard_map = target.shard_map() if self.settings.aggregate else None
        for round_ in plan_rounds(self._sealed(target, lane.ordered()), shard_map=shard_map):
            target.put_round(round_)
            lane.done(round_.keys)

    def _sealed(self, target: Target, items: list[Outgoing]) -> list[Outgoing]:
        """With ``raw_copy_kms_key_id``: the items' bytes sealed under one data key of the
        target's region (raises - the flush fails, the checkpoint holds - when KMS cannot be used)."""
        key_id = self.settings.raw_copy_kms_key_id
        if not key_id or not items:
            return items
        sealer = self._sealers.get(target.name)
        if sealer is None:
            sealer = self._sealers[target.name] = KmsSealer(self._kms_client_factory(target.config), key_id)
        try:
            batch = sealer.batch()
        except Exception as exc:
            raise RetryableError(
                f"replication to {target.name}: cannot seal with KMS key {key_id}: {exc!r}"
            ) from exc
        return [dataclasses.replace(i, data=seal_record(batch, i.key, i.data)) for i in items]

    def _next_probe_in(self) -> float:
        unhealthy = [t.health.next_check_in(self.clock()) for t in self.targets if not t.health.healthy]
        return min(unhealthy) if unhealthy else 1.0

    # --- introspection -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Health and backlog per target (for logs, a status endpoint, tests)."""
        return {
            "mode": self.settings.mode.value,
            "active": None if self.active is None else self.active.name,
            "failovers": self.failovers,
            "pending": {name: len(lane.pending) for name, lane in self.lanes.items()},
            "lateSkipped": {name: lane.late_skipped for name, lane in self.lanes.items()},
            "targets": {
                t.name: {
                    "healthy": t.health.healthy,
                    "failures": t.health.failures,
                    "lastError": t.health.last_error,
                    "stream": t.config.stream,
                    "region": t.config.region,
                }
                for t in self.targets
            },
        }


def _partition_key(record: JournalRecord) -> str:
    """The document id for a revision (its versions stay in order); QLDB's own key otherwise."""
    if isinstance(record, RevisionDetails):
        return record.document_id
    user = record.user_record
    if user is not None and user.partition_key:
        return user.partition_key
    if isinstance(record, ControlRecord):
        return f"control-{record.control_record_type}"
    return record.stream_arn[-256:] or "qldb"
