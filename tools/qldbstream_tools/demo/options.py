"""What the demo runs with: its options, the names of what it creates, and the worker's settings.

The worker is configured the way an operator configures it - a ``QLDBSTREAM_*`` environment
(:func:`worker_environ`) read by :meth:`qldbstream.app.assembly.App.from_env` - so the demo goes through the
real configuration path: plugin loading, per-handler settings, the DynamoDB de-duplication store,
the directory DLQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HANDLERS", "DemoNames", "DemoOptions", "worker_environ"]

#: The built-in handlers, in the order the pipeline calls them (fraud before workflow: its alerts
#: feed the workflow).
HANDLERS = ("audit", "fraud", "analytics", "export", "replication", "workflow")


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs. ``output`` is where its files go (``None``: a fresh temporary directory)."""

    seed: int = 2024
    transactions: int = 150
    shards: int = 4
    duplicate_rate: float = 0.03
    reorder_window: int = 3
    tamper: str = "Transactions#5:data.amount"
    stream_name: str = "qldbstream-demo"
    output: Path | None = None
    #: seconds between Prometheus scrapes while the worker runs
    scrape_interval: float = 0.5
    #: seconds between polls of a shard that is caught up
    poll_interval: float = 0.2


@dataclass(frozen=True)
class DemoNames:
    """Everything the demo creates on the local AWS, and the files it writes under ``output``."""

    stream: str
    output: Path
    endpoint: str
    region: str = "us-east-1"
    replica_region: str = "us-west-2"

    @property
    def replica_stream(self) -> str:
        return f"{self.stream}-replica"

    @property
    def checkpoint_table(self) -> str:
        return f"{self.stream}-checkpoints"

    @property
    def dedupe_table(self) -> str:
        return f"{self.stream}-dedupe"

    @property
    def velocity_table(self) -> str:
        return f"{self.stream}-velocity"

    @property
    def compliance_table(self) -> str:
        return f"{self.stream}-compliance"

    @property
    def alert_queue(self) -> str:
        return f"{self.stream}-fraud-alerts.fifo"

    @property
    def security_topic(self) -> str:
        return f"{self.stream}-security"

    @property
    def security_queue(self) -> str:
        """An SQS queue subscribed to the security topic, to read what the workflow published."""
        return f"{self.stream}-security-inbox"

    @property
    def application(self) -> str:
        return self.stream

    @property
    def dlq_dir(self) -> Path:
        return self.output / "dlq"

    @property
    def audit_file(self) -> Path:
        return self.output / "audit.jsonl"

    @property
    def export_dir(self) -> Path:
        return self.output / "export"

    @property
    def velocity_dir(self) -> Path:
        return self.output / "velocity"

    @property
    def log_file(self) -> Path:
        return self.output / "worker.log"

    @property
    def export_partition(self) -> str:
        return "table=TABLE/date=YYYY-MM-DD/"


def worker_environ(
    names: DemoNames, *, shards: int, alert_queue_url: str, security_topic_arn: str
) -> dict[str, str]:
    """The worker's whole configuration as ``QLDBSTREAM_*`` variables (what ``qldbstream run`` reads)."""
    endpoint, region = names.endpoint, names.region

    def handler(name: str, **settings: str) -> dict[str, str]:
        return {f"QLDBSTREAM_HANDLER_{name.upper()}__{k.upper()}": v for k, v in settings.items()}

    return {
        "QLDBSTREAM_STREAM_NAME": names.stream,
        "QLDBSTREAM_REGION": region,
        "QLDBSTREAM_ENDPOINT_URL": endpoint,
        "QLDBSTREAM_APPLICATION_NAME": names.application,
        "QLDBSTREAM_CHECKPOINT_TABLE": names.checkpoint_table,
        "QLDBSTREAM_DEDUPE_STORE": f"dynamodb:{names.dedupe_table}",
        "QLDBSTREAM_DLQ": f"dir:{names.dlq_dir}",
        # every revision counts once whatever the shard it came from (audit, export, analytics, replica)
        "QLDBSTREAM_LATE_POLICY": "deliver-late",
        "QLDBSTREAM_HANDLERS": ",".join(HANDLERS),
        # small GetRecords batches: the shards advance together and the progress display moves
        "QLDBSTREAM_BATCH_MAX": "25",
        "QLDBSTREAM_LOG_LEVEL": "INFO",
        "QLDBSTREAM_LOG_FORMAT": "json",
        **handler("audit", path=str(names.audit_file)),
        **handler(
            "fraud",
            sinks=f"sqs:{alert_queue_url},bus",
            # the worker catches up on a backlog, polling the shards in turn: they can be minutes of
            # event time apart, so window rules wait for them (docs/handlers/fraud.md, catch-up runs)
            allowed_lateness="5m",
            region=region,
            endpoint_url=endpoint,
        ),
        **handler(
            "analytics",
            preset="transaction_velocity",
            sinks="parquet,dynamodb",
            parquet_path=str(names.velocity_dir),
            dynamodb_table=names.velocity_table,
            min_shards=str(shards),
            # the stream is reordered a little: windows wait 30 s of event time, and correct later
            out_of_orderness="30s",
            allowed_lateness="5m",
            region=region,
            endpoint_url=endpoint,
        ),
        **handler("export", to=str(names.export_dir), partition=names.export_partition),
        **handler(
            "replication",
            targets="west",
            west_stream=names.replica_stream,
            west_region=names.replica_region,
            west_endpoint=endpoint,
        ),
        **handler(
            "workflow",
            security_alert_topic_arn=security_topic_arn,
            compliance_table_name=names.compliance_table,
            region=region,
            endpoint_url=endpoint,
        ),
    }
