"""The demo's report as JSON-ready data (``qldbstream demo --json`` prints it as is).

Keys are camelCase like the other qldbstream reports. The sections follow the data: ledger →
Kinesis → worker (per shard) → verification → de-duplication and late revisions → DLQ → handlers
(audit, fraud, velocity, export, replica, workflow) → metrics scraped → checks.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from qldbstream_tools.demo.checks import Check, Observed
from qldbstream_tools.demo.collect import ReadBack
from qldbstream_tools.demo.options import HANDLERS, DemoNames, DemoOptions
from qldbstream_tools.demo.truth import GroundTruth

if TYPE_CHECKING:
    from qldbstream_handlers.fraud import Alert

    from qldbstream_tools.demo.worker_run import _Run
    from qldbstream_tools.simulate import Simulation

__all__ = ["SHOWN_WINDOWS", "build_report", "describe_alert"]

#: Velocity windows listed in the report (all of them are checked).
SHOWN_WINDOWS = 5
_EXAMPLES_PER_RULE = 2


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"


def describe_alert(alert: Alert) -> str:
    """Why the alert fired, in one line."""
    d = alert.details
    if alert.rule == "high_value":
        return f"{d.get('amount')} {d.get('currency')} >= {d.get('threshold')}"
    if alert.rule == "anomaly":
        features = d.get("features", {})
        return (
            f"Random Cut Forest score {alert.score:.1f} >= {d.get('threshold')}: "
            f"{alert.top_feature} {d.get('direction', '')} (features {features})"
        )
    if "count" in d:
        minutes = float(d.get("windowSeconds", 0)) / 60
        return f"{d['count']} payments, {d.get('sum')} {d.get('currency')} within {minutes:g} min"
    return str(dict(d))


def _alerts(alerts: list[Alert], raised: Counter[str]) -> dict[str, Any]:
    by_rule: dict[str, list[Alert]] = {}
    for a in sorted(alerts, key=lambda a: (a.event_time_ms, a.id)):
        by_rule.setdefault(a.rule, []).append(a)
    examples = [
        {
            "rule": a.rule,
            "accountId": a.account_id,
            "score": a.score,
            "eventTime": a.event_time,
            "evidence": len(a.evidence),
            "explanation": describe_alert(a),
        }
        for rule in sorted(by_rule)
        for a in by_rule[rule][:_EXAMPLES_PER_RULE]
    ]
    return {"byRule": dict(sorted(raised.items())), "examples": examples}


def build_report(
    options: DemoOptions,
    names: DemoNames,
    sim: Simulation,
    truth: GroundTruth,
    run: _Run,
    seen: Observed,
    more: ReadBack,
    checks: list[Check],
    seconds: float,
) -> dict[str, Any]:
    m = run.metrics
    counters = m.counters

    def by(metric: str, dimension: str) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (name, dims), value in counters.items():
            if name == metric:
                out[dict(dims).get(dimension, "")] += int(value)
        return dict(sorted(out.items()))

    shards = []
    for shard_id, s in sorted(run.report.shards.items()):
        item = more.checkpoint_items.get(shard_id, {})
        shards.append(
            {
                "shardId": shard_id,
                "kinesisRecords": s.records_read,
                "userRecords": s.user_records,
                "millisBehindLatest": s.millis_behind_latest,
                "maxMillisBehindLatest": run.observer.max_lag.get(shard_id),
                "iteratorAgeMs": s.iterator_age_ms,
                "maxIteratorAgeMs": run.observer.max_age.get(shard_id),
                "checkpoint": None if s.checkpoint is None else f"{s.checkpoint[0]}/{s.checkpoint[1]}",
                "checkpointInTable": "sequence_number" in item,
                "finished": s.finished,
            }
        )
    export = more.export
    windows = sorted(seen.velocity_parquet.values(), key=lambda w: w.start_ms)
    shown = [
        {
            "windowStart": _iso(w.start_ms),
            "transactions": w.transactions,
            "uniqueAccounts": w.unique_accounts,
            "totalAmount": _money(w.total),
            "final": w.final,
            "matchesLedger": truth.velocity.get(w.start_ms) == w.values,
        }
        for w in windows[:SHOWN_WINDOWS]
    ]
    replica = seen.replica
    ledger = sim.summary()
    during = [s for s in seen.scrapes if s.phase == "during"]
    final = [s for s in seen.scrapes if s.phase == "final"]
    letters = [
        {
            "file": name,
            "stage": d.stage,
            "documentId": d.document_id,
            "version": d.version,
            "blockSequenceNo": d.block_sequence_no,
            "checks": sorted({f["check"] for f in d.verification_failures}),
            "reason": d.error_message,
        }
        for name, d in zip(more.dead_letter_files, seen.dead_letters, strict=True)
    ]
    routes: dict[str, dict[str, int]] = {}
    for (route, status), n in sorted(seen.routes.items()):
        routes.setdefault(route, {})[status] = n
    return {
        "ok": all(c.ok for c in checks),
        "seconds": round(seconds, 1),
        "output": str(names.output),
        "endpoint": names.endpoint,
        "options": {
            "seed": options.seed,
            "transactions": options.transactions,
            "shards": options.shards,
            "duplicates": options.duplicate_rate,
            "reorder": options.reorder_window,
            "tamper": options.tamper,
        },
        "ledger": {
            **ledger,
            "plantedBursts": len(sim.ledger.bursts),
            "plantedFailures": [f.to_json() for f in sim.expected.failures],
        },
        "kinesis": {"stream": names.stream, "region": names.region, "shards": options.shards},
        "worker": {
            "reason": run.report.reason,
            "kinesisRecords": run.report.records,
            "userRecords": int(m.total("records_in", stage="user")),
            "batches": run.batches.batches,
            "checkpointTable": names.checkpoint_table,
            "dedupeStore": f"dynamodb:{names.dedupe_table}",
            "handlers": list(HANDLERS),
            "shards": shards,
            "halts": run.batches.halts,
        },
        "verification": {
            "checks": run.tally,
            "failed": {c: n for c, n in seen.tally_failed.items() if n},
        },
        "deduplicated": {"total": run.batches.duplicates, "byHandler": by("dedupe_hits", "handler")},
        "lateRevisions": by("late_revisions", "action"),
        "deadLetters": {"directory": str(names.dlq_dir), "count": len(letters), "entries": letters},
        "delivered": {h: run.batches.delivered.get(h, 0) for h in HANDLERS},
        "audit": {
            "file": str(names.audit_file),
            "lines": more.audit_lines,
            "revisions": len(seen.audit),
        },
        "fraud": {
            "alerts": seen.alerts_raised,
            "sqsQueue": names.alert_queue,
            "sqsMessages": len(seen.alerts),
            "busAlerts": seen.bus_alerts,
            "plantedBursts": len(truth.bursts),
            **_alerts(seen.alerts, Counter(by("fraud_alerts", "rule"))),
        },
        "velocity": {
            "query": "transaction_velocity",
            "windows": len(seen.velocity_parquet),
            "parquetDirectory": str(names.velocity_dir),
            "parquetFiles": more.velocity_files,
            "dynamodbTable": names.velocity_table,
            "dynamodbItems": len(seen.velocity_items),
            "ledgerWindows": len(truth.velocity),
            "shown": shown,
        },
        "export": {
            "directory": str(names.export_dir),
            "partitioning": names.export_partition,
            "files": len(export.files),
            "bytes": export.bytes,
            "rows": export.row_count,
            "partitions": dict(sorted(export.partitions.items())),
        },
        "replica": {
            "stream": names.replica_stream,
            "region": names.replica_region,
            "userRecords": replica["userRecords"],
            "revisions": len(seen.replica_keys),
            "expected": replica["expected"],
            "matched": replica["matched"],
            "duplicates": replica["duplicates"],
            **replica["counts"],
            "verified": not replica["counts"]["verificationFailures"] and not replica["counts"]["unreadable"],
            "checks": replica["checks"],
        },
        "workflow": {
            "executions": {
                f"{trigger}:{outcome}": n for (trigger, outcome), n in sorted(more.executions.items())
            },
            "routes": routes,
            "snsTopic": names.security_topic,
            "snsMessages": seen.sns_messages,
            "snsSample": more.sns_sample,
            "complianceTable": names.compliance_table,
            "complianceItems": len(seen.compliance_ids),
        },
        "metrics": {
            "url": run.metrics_url,
            "scrapes": [s.as_dict() for s in (during[:1] + during[1:][-1:] + final)],
            "scrapesDuringRun": sum(s.phase == "during" for s in seen.scrapes),
            "scrapeErrors": run.observer.scrape_errors,
        },
        "checks": [c.as_dict() for c in checks],
    }
