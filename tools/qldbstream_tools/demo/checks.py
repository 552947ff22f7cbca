"""The demo's verdict: what it observed, compared with the ground truth (:mod:`.truth`).

Each :class:`Check` says what was compared and how it came out; the demo exits 0 only when all
of them pass. Nothing is compared with a constant: every expectation comes from the simulator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qldbstream.pipeline.dlq import DeadLetter
from qldbstream_tools.demo.collect import VelocityWindow
from qldbstream_tools.demo.scrape import USER_RECORDS, Scrape
from qldbstream_tools.demo.truth import BURST_MIN_PAYMENTS, HIGH_VALUE_MIN, FailureKey, GroundTruth

if TYPE_CHECKING:
    from qldbstream_handlers.fraud import Alert

__all__ = ["Check", "Observed", "evaluate"]

BURST_RULE = "rapid_small_transactions"
HIGH_VALUE_ROUTE = "high value: risk + notify"
BLOCK_ROUTE = "fraud: blocked + SNS"
COMPLIANCE_ROUTE = "compliance: checked + recorded"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Observed:
    """Everything the demo read back after the run."""

    dead_letters: list[DeadLetter]
    tally_failed: dict[str, int]
    audit: Counter[str]
    export_rows: Counter[str]
    replica: dict[str, Any]
    replica_keys: set[str]
    alerts: list[Alert]
    bus_alerts: int
    alerts_raised: int
    velocity_parquet: dict[int, VelocityWindow]
    velocity_items: dict[int, VelocityWindow]
    #: (route, status) -> executions, and route -> execution names
    routes: Counter[tuple[str, str]]
    route_names: dict[str, set[str]]
    revision_executions: int
    sns_messages: int
    compliance_ids: set[str]
    scrapes: list[Scrape]
    records_in_user: float
    worker_reason: str
    #: shard -> has a checkpoint in the table; shard -> user records read
    checkpoints: dict[str, bool] = field(default_factory=dict)
    shard_records: dict[str, int] = field(default_factory=dict)

    @property
    def found_failures(self) -> set[FailureKey]:
        from qldbstream_tools.demo.truth import failure_key

        found = {
            failure_key(f["check"], f.get("blockSequenceNo"), f.get("documentId"))
            for letter in self.dead_letters
            for f in letter.verification_failures
        }
        if any(letter.stage == "deaggregate" for letter in self.dead_letters):
            found.add(failure_key("V1", None, None))  # a corrupt aggregate: its envelope names no check
        return found

    @property
    def dead_revisions(self) -> set[tuple[str, int]]:
        return {
            (d.document_id, d.version)
            for d in self.dead_letters
            if d.document_id is not None and d.version is not None
        }


def _few(items: Iterable[Any], n: int = 3) -> str:
    listed = sorted(str(i) for i in items)
    more = f" (+{len(listed) - n} more)" if len(listed) > n else ""
    return ", ".join(listed[:n]) + more


def _describe(keys: Iterable[FailureKey]) -> str:
    parts = []
    for check, block, doc in sorted(keys, key=lambda k: (k[0], k[1] or 0, k[2] or "")):
        where = f"block {block}" if block is not None else "a Kinesis record"
        parts.append(f"{check} ({where}{', document ' + doc if doc else ''})")
    return ", ".join(parts) or "nothing"


def _exactly_once(name: str, seen: Counter[str], expected: frozenset[str], dead: set[str]) -> Check:
    missing = expected - set(seen)
    repeated = {k for k, n in seen.items() if n > 1}
    extra = set(seen) - expected
    leaked = extra & dead
    ok = not (missing or repeated or extra)
    detail = f"{len(seen)} of {len(expected)} revisions, each once"
    if not ok:
        detail = (
            f"missing {len(missing)} [{_few(missing)}], repeated {len(repeated)} [{_few(repeated)}], "
            f"unexpected {len(extra)} [{_few(extra)}] (of them tampered: {len(leaked)})"
        )
    return Check(name, ok, detail)


def _velocity(name: str, truth: GroundTruth, found: Mapping[int, VelocityWindow]) -> Check:
    wrong = [s for s, values in truth.velocity.items() if s not in found or found[s].values != values]
    extra = set(found) - set(truth.velocity)
    ok = not wrong and not extra and bool(found)
    detail = f"{len(found)} windows, all equal to the ledger's count, distinct accounts and total"
    if not ok:
        detail = f"{len(wrong)} windows differ from the ledger, {len(extra)} unexpected, {len(found)} found"
    return Check(name, ok, detail)


def evaluate(truth: GroundTruth, seen: Observed) -> list[Check]:
    """Every check of the demo, in the order the report shows them."""
    checks: list[Check] = []
    found = seen.found_failures
    flagged = {c for c, n in seen.tally_failed.items() if n}
    planted_checks = {k[0] for k in truth.failures}
    checks.append(
        Check(
            "verification caught exactly the planted tampering",
            found == set(truth.failures) and flagged == planted_checks,
            f"planted {_describe(truth.failures)}; found {_describe(found)}"
            + ("" if flagged == planted_checks else f"; checks failing: {sorted(flagged)}"),
        )
    )
    stages = Counter(d.stage for d in seen.dead_letters)
    expected_stages = {"verify"} | ({"deaggregate"} if truth.unreadable else set())
    dead = seen.dead_revisions
    checks.append(
        Check(
            "the tampered record is in the DLQ, nothing else is",
            dead == set(truth.dead)
            and set(stages) <= expected_stages
            and bool(seen.dead_letters) == bool(truth.failures),
            f"{len(seen.dead_letters)} dead letter(s) ({dict(stages)}); revisions: "
            + (_few(f"{d} v{v}" for d, v in dead) or "none"),
        )
    )
    dead_keys = {f"{d}#{v}" for d, v in truth.tampered}
    executed = {name for names in seen.route_names.values() for name in names}
    leaks = {
        "audit": dead_keys & set(seen.audit),
        "export": dead_keys & set(seen.export_rows),
        "replica": {f"rev#{k}" for k in dead_keys} & seen.replica_keys,
        "workflow": {k.replace("#", "-") for k in dead_keys} & executed,
    }
    checks.append(
        Check(
            "the tampered revision reached no handler",
            not any(leaks.values()),
            "not in the audit log, the export, the replica or the workflow"
            if not any(leaks.values())
            else "; ".join(f"{k}: {_few(v)}" for k, v in leaks.items() if v),
        )
    )
    keys = truth.audit_keys
    checks.append(_exactly_once("audit log: every other revision exactly once", seen.audit, keys, dead_keys))
    checks.append(
        _exactly_once("export: every other revision exactly once", seen.export_rows, keys, dead_keys)
    )
    rep = seen.replica
    counts = rep["counts"]
    expected_replica = {f"rev#{k}" for k in keys}
    replica_ok = seen.replica_keys == expected_replica and not any(
        counts[k] for k in ("missing", "extra", "mismatched", "verificationFailures", "unreadable")
    )
    checks.append(
        Check(
            "replica (us-west-2) holds every replicated revision and verifies",
            replica_ok,
            f"{rep['matched']} of {len(expected_replica)} revisions, byte for byte; "
            + ", ".join(f"{k} {v}" for k, v in counts.items()),
        )
    )
    burst_alerts = [a for a in seen.alerts if a.rule == BURST_RULE]
    missed = []
    for burst in truth.bursts:
        allowed = truth.small_payments.get(burst.account_id, frozenset())
        docs = set(burst.document_ids)
        if not any(
            a.account_id == burst.account_id
            and {d for d, _ in a.evidence} <= allowed
            and docs & {d for d, _ in a.evidence}
            for a in burst_alerts
        ):
            missed.append(burst.account_id)
    checks.append(
        Check(
            "fraud: every planted burst raised an alert",
            not missed,
            f"{len(truth.bursts) - len(missed)} of {len(truth.bursts)} bursts of >= {BURST_MIN_PAYMENTS} "
            f"small payments ({len(burst_alerts)} {BURST_RULE} alerts)"
            + (f"; missed accounts {_few(missed)}" if missed else ""),
        )
    )
    high = {d for a in seen.alerts if a.rule == "high_value" for d, _ in a.evidence}
    checks.append(
        Check(
            "fraud: every high-value payment raised an alert",
            high == set(truth.high_value),
            f"{len(high)} high_value alerts for {len(truth.high_value)} payments of >= {HIGH_VALUE_MIN}",
        )
    )
    checks.append(
        Check(
            "fraud alerts reached SQS and the in-process bus",
            len(seen.alerts) == seen.alerts_raised == seen.bus_alerts
            and len({a.id for a in seen.alerts}) == len(seen.alerts),
            f"{seen.alerts_raised} raised, {len(seen.alerts)} SQS messages, {seen.bus_alerts} on the bus",
        )
    )
    checks.append(_velocity("velocity windows (Parquet) match the ledger", truth, seen.velocity_parquet))
    checks.append(_velocity("velocity windows (DynamoDB) match the ledger", truth, seen.velocity_items))
    failed = sum(n for (_, status), n in seen.routes.items() if status != "succeeded")
    high_routed = {n.rsplit("-", 1)[0] for n in seen.route_names.get(HIGH_VALUE_ROUTE, set())}
    blocked = sum(n for (route, _), n in seen.routes.items() if route == BLOCK_ROUTE)
    compliance = seen.route_names.get(COMPLIANCE_ROUTE, set())
    workflow_ok = (
        failed == 0
        and seen.revision_executions == len(truth.delivered)
        and high_routed == set(truth.high_value)
        and compliance == set(truth.compliance) == seen.compliance_ids
        and blocked == seen.sns_messages
        and blocked >= len(truth.bursts)
    )
    checks.append(
        Check(
            "workflow: one execution per revision, routed as the ledger says",
            workflow_ok,
            f"{seen.revision_executions} revision executions for {len(truth.delivered)} revisions, "
            f"{failed} failed; high value {len(high_routed)}/{len(truth.high_value)}; compliance "
            f"{len(compliance)}/{len(truth.compliance)} ({len(seen.compliance_ids)} DynamoDB items); "
            f"blocked {blocked} ({seen.sns_messages} SNS messages)",
        )
    )
    during = [s for s in seen.scrapes if s.phase == "during" and s.values.get(USER_RECORDS, 0) > 0]
    final = [s for s in seen.scrapes if s.phase == "final"]
    final_in = final[-1].values.get(USER_RECORDS) if final else None
    checks.append(
        Check(
            "metrics scraped over HTTP while the worker ran",
            bool(during) and final_in == seen.records_in_user,
            f"{len(during)} scrape(s) during the run with records counted, final records_in "
            f"{final_in} = {seen.records_in_user} recorded",
        )
    )
    missing_cp = [s for s, n in seen.shard_records.items() if n and not seen.checkpoints.get(s)]
    checks.append(
        Check(
            "worker caught up and checkpointed every shard in DynamoDB",
            seen.worker_reason == "caught-up" and not missing_cp,
            f"stopped: {seen.worker_reason}; {sum(seen.checkpoints.values())} shard checkpoints"
            + (f"; none for {missing_cp}" if missing_cp else ""),
        )
    )
    return checks
