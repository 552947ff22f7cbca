"""The demo, step by step (see :mod:`qldbstream_tools.demo` for the overview)."""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream_tools.demo.aws import (
    DemoResources,
    create_resources,
    drain_queue,
    local_credentials,
    scan_table,
)
from qldbstream_tools.demo.checks import Check, Observed, evaluate
from qldbstream_tools.demo.collect import (
    ReadBack,
    read_audit,
    read_dead_letters,
    read_export,
    read_velocity_items,
    read_velocity_parquet,
)
from qldbstream_tools.demo.options import DemoNames, DemoOptions
from qldbstream_tools.demo.progress import DemoProgress, Progress
from qldbstream_tools.demo.report import build_report
from qldbstream_tools.demo.truth import GroundTruth
from qldbstream_tools.demo.worker_run import _Run, _run_worker

if TYPE_CHECKING:
    from qldbstream_tools.simulate import Simulation

__all__ = [
    "DEMO_BURST_WINDOW_MS",
    "DEMO_MIX",
    "DemoProgress",
    "DemoResult",
    "Progress",
    "run_demo",
    "simulation",
]

#: The simulated bank runs a little more of what the handlers look for than the default mix:
#: planted bursts, high-value wires and account reviews (frozen or flagged accounts).
DEMO_MIX = {"small_burst": 5.0, "high_value": 4.0, "account_review": 3.0}
#: A burst's payments within one minute (default four), so that few are cut off by the run's end.
DEMO_BURST_WINDOW_MS = 60_000


@dataclass
class DemoResult:
    """The report (JSON-ready, ``report["checks"]`` included) and the checks behind the exit status."""

    report: dict[str, Any]
    checks: list[Check]
    output: Path

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _requirements() -> None:
    """Fail with one line, before anything starts, when the demo's extras are not installed."""
    import importlib.util

    for module, what in (
        (
            "moto",
            "the embedded local AWS needs moto, a dependency of qldbstream-tools: pip install -e ./tools",
        ),
        ("qldbstream_handlers", "the demo runs the built-in handlers: pip install -e ./handlers"),
        ("pyarrow", "the export and velocity handlers write Parquet: pip install pyarrow"),
    ):
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(what)


def _output(options: DemoOptions) -> Path:
    if options.output is None:
        return Path(tempfile.mkdtemp(prefix="qldbstream-demo-"))
    out = options.output.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--output {out}: not an empty directory (the demo appends to its files)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def simulation(options: DemoOptions) -> Simulation:
    """The demo's simulated ledger for these options (deterministic: same options, same bytes)."""
    from qldbstream_tools.simulate import (
        DeliveryOptions,
        SimulationConfig,
        Workload,
        WorkloadMix,
        parse_tamper,
        simulate,
    )

    return simulate(
        SimulationConfig(
            seed=options.seed,
            workload=Workload(
                transactions=options.transactions,
                mix=WorkloadMix(**DEMO_MIX),
                burst_window_ms=DEMO_BURST_WINDOW_MS,
            ),
            delivery=DeliveryOptions(
                aggregate=True,
                shards=options.shards,
                duplicate_rate=options.duplicate_rate,
                reorder_window=options.reorder_window,
                # an open stream (no CONTROL COMPLETED): the worker stops once caught up, and the
                # demo ends the run itself (it drains the fraud and analytics handlers)
                completed=False,
            ),
            tampers=(parse_tamper(options.tamper),),
        )
    )


def run_demo(options: DemoOptions | None = None, progress: Progress | None = None) -> DemoResult:
    """Run the whole demo (see the package docstring) and return its report and checks."""
    from qldbstream_tools.demo.localaws import LocalAws

    options = options or DemoOptions()
    _requirements()
    started = time.monotonic()

    def step(stage: str, done: int = 0, total: int | None = None) -> None:
        if progress is not None:
            progress(DemoProgress(stage, done, total, elapsed=time.monotonic() - started))

    output = _output(options)
    step("simulating the ledger", 0, 1)
    sim = simulation(options)
    truth = GroundTruth.of(sim)
    step("simulating the ledger", 1, 1)
    with local_credentials(), LocalAws() as aws:
        names = DemoNames(options.stream_name, output, aws.endpoint)
        step("creating streams, tables, queues and a topic on the local AWS", 0, 1)
        resources = create_resources(aws, names, options.shards)
        step("creating streams, tables, queues and a topic on the local AWS", 1, 1)
        put = _put(aws, names, sim, step)
        run = _run_worker(options, names, resources, progress, started, put)
        step("reading back the handlers' output", 0, 1)
        observed, read_back = _collect(aws, names, resources, run)
        step("reading back the handlers' output", 1, 1)
    checks = evaluate(truth, observed)
    report = build_report(
        options, names, sim, truth, run, observed, read_back, checks, time.monotonic() - started
    )
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return DemoResult(report, checks, output)


def _put(
    aws: Any, names: DemoNames, sim: Simulation, step: Callable[[str, int, int | None], None]
) -> dict[str, int]:
    """Put the simulated stream into Kinesis; return how many records went to each shard."""
    from qldbstream.io.kinesis_writer import PutEntry, put_records

    kinesis = aws.client("kinesis")
    entries = [PutEntry(d.data, d.partition_key, d.explicit_hash_key) for d in sim.deliveries]
    what = "putting the simulated QLDB stream into Kinesis"
    shards: Counter[str] = Counter()
    step(what, 0, len(entries))
    for start in range(0, len(entries), 500):
        results = put_records(kinesis, names.stream, entries[start : start + 500])
        shards.update(r.shard_id for r in results)
        step(what, min(start + 500, len(entries)), len(entries))
    return dict(shards)


def _collect(aws: Any, names: DemoNames, resources: DemoResources, run: _Run) -> tuple[Observed, ReadBack]:
    from qldbstream_handlers.fraud import Alert

    from qldbstream.cli.dr_check import Copy, compare, scan
    from qldbstream.core.decode import RecordType
    from qldbstream.io.clients import aws_client
    from qldbstream.io.kinesis_reader import read_stream

    letters = read_dead_letters(names.dlq_dir)
    audit, audit_lines = read_audit(names.audit_file)
    export = read_export(names.export_dir)
    velocity_parquet, velocity_files = read_velocity_parquet(names.velocity_dir)
    dynamodb = aws.client("dynamodb")
    velocity_items = read_velocity_items(scan_table(dynamodb, names.velocity_table))
    sqs = aws.client("sqs")
    alerts = [Alert.from_json(body) for body in drain_queue(sqs, resources.alert_queue_url)]
    sns_messages = drain_queue(sqs, resources.security_queue_url)
    compliance = {i["EventId"]["S"] for i in scan_table(dynamodb, names.compliance_table)}
    checkpoints = {i["shard_id"]["S"]: i for i in scan_table(dynamodb, names.checkpoint_table)}
    types = frozenset({RecordType.REVISION_DETAILS})
    source = scan(
        Copy(f"{names.region}:{names.stream}"),
        read_stream(aws.client("kinesis"), names.stream, poll_interval=0.05),
        types=types,
    )
    west = aws_client(
        "kinesis", region_name=names.replica_region, endpoint_url=names.endpoint, max_attempts=3
    )
    target = scan(
        Copy(f"{names.replica_region}:{names.replica_stream}"),
        read_stream(west, names.replica_stream, poll_interval=0.05),
        types=types,
    )
    replica = compare(source, target, limit=5)
    m = run.metrics
    executions = Counter(
        {
            (dict(dims).get("trigger", ""), dict(dims).get("outcome", "")): int(n)
            for (name, dims), n in m.counters.items()
            if name == "workflow_executions"
        }
    )
    observed = Observed(
        dead_letters=[letter for _, letter in letters],
        tally_failed={c: v["failed"] for c, v in run.tally.items()},
        audit=audit,
        export_rows=export.rows,
        replica=replica,
        replica_keys=set(target.entries),
        alerts=alerts,
        bus_alerts=len(run.bus_alerts),
        alerts_raised=int(m.total("fraud_alerts")),
        velocity_parquet=velocity_parquet,
        velocity_items=velocity_items,
        routes=run.recorder.routes,
        route_names=run.recorder.names,
        revision_executions=sum(n for (trigger, _), n in executions.items() if trigger == "revision"),
        sns_messages=len(sns_messages),
        compliance_ids=compliance,
        scrapes=run.scrapes,
        records_in_user=m.total("records_in", stage="user"),
        worker_reason=run.report.reason,
        checkpoints={s: s in checkpoints and "sequence_number" in checkpoints[s] for s in run.report.shards},
        shard_records={s: st.user_records for s, st in run.report.shards.items()},
    )
    read_back = ReadBack(
        [name for name, _ in letters],
        audit_lines,
        export,
        velocity_files,
        checkpoints,
        executions,
        sns_messages[:1],
    )
    return observed, read_back
