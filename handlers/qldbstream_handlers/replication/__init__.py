"""The ``replication`` handler: disaster recovery copies of a QLDB stream in other regions.

Verified journal records are republished, byte for byte, to one or more target Kinesis data
streams (one per region), with the document id as partition key, optional KPL re-aggregation,
per-target health checks and failover. Writes happen in ``flush``, before the checkpoint; a
target that cannot be written holds the checkpoint, so a failure never drops anything. Each target
holds every document's versions in increasing version order: a revision older than one already
written is skipped and counted (``replication_late_skipped``), never written after it.

``qldbstream dr-check`` compares a target with the source. See ``docs/handlers/replication.md``.
"""

from qldbstream_handlers.replication.handler import ClientFactory, Lane, ReplicationHandler, default_client
from qldbstream_handlers.replication.health import TargetHealth
from qldbstream_handlers.replication.rounds import Outgoing, Round, ShardMap, plan_rounds
from qldbstream_handlers.replication.settings import Mode, ReplicationSettings, TargetConfig
from qldbstream_handlers.replication.target import RecentKeys, Target

__all__ = [
    "ClientFactory",
    "Lane",
    "Mode",
    "Outgoing",
    "RecentKeys",
    "ReplicationHandler",
    "ReplicationSettings",
    "Round",
    "ShardMap",
    "Target",
    "TargetConfig",
    "TargetHealth",
    "default_client",
    "plan_rounds",
]
