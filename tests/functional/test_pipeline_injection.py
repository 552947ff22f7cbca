"""What the edges give the pipeline is passed in, never imported: the tracer (spans around the
stages) and the rule that says which outside errors - AWS's - are transient. The application's
pipeline gets the edges' ones (``qldbstream.io.tracing.span``, ``qldbstream.io.aws_errors``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.decode import RevisionDetails
from qldbstream.io.aws_errors import is_transient
from qldbstream.io.tracing import span
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.reliability import RetryPolicy, TransientCheck
from tests.support.fakes import FakeTime, MemoryDLQ
from tests.support.streams import kinesis_records, simulation


def throttled_router() -> Router:
    router = Router("sink")

    @router.revision()
    def on_revision(revision: RevisionDetails, ctx: HandlerContext) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {}}, "PutItem")

    return router


def pipeline_with(router: Router, dlq: MemoryDLQ, transient: TransientCheck | None) -> Pipeline:
    t = FakeTime()
    return Pipeline(
        [router],
        dlq=dlq,
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=3)),
        clock=t.clock,
        sleep=t.sleep,
        transient=transient,
    )


def test_the_pipeline_opens_a_span_per_stage_and_handler_through_its_tracer() -> None:
    opened: list[tuple[str, dict[str, Any]]] = []

    def tracer(name: str, **attributes: Any) -> AbstractContextManager[None]:
        opened.append((name, attributes))
        return nullcontext()

    (records,) = kinesis_records(simulation(5)).values()
    pipeline = Pipeline([Router("count")], dlq=MemoryDLQ(), tracer=tracer)
    assert not pipeline.process("s", records).halted
    assert opened == [
        ("verify", {"shard": "s", "records": len(records)}),
        ("admit", {"shard": "s"}),
        ("handler", {"handler": "count", "shard": "s"}),
    ]


def test_aws_throttling_is_transient_only_under_the_rule_the_pipeline_is_given() -> None:
    (records,) = kinesis_records(simulation(5)).values()
    dlq = MemoryDLQ()
    result = pipeline_with(throttled_router(), dlq, None).process("s", records)
    assert not result.halted and dlq.letters  # an unknown error: retried, then dead-lettered
    assert all(letter.error_type == "ClientError" for letter in dlq.letters)

    dlq = MemoryDLQ()
    result = pipeline_with(throttled_router(), dlq, is_transient).process("s", records)
    assert result.halted and not dlq.letters  # transient: retried, then the shard halts
    assert "ThrottlingException" in result.halt_reason


def test_the_apps_pipeline_gets_the_edges_tracer_and_aws_rule(tmp_path: Path) -> None:
    app = App(Settings(dlq=f"dir:{tmp_path}"), handlers=[throttled_router()])
    pipeline = app.pipeline(sleep=lambda seconds: None)
    assert pipeline.tracer is span and pipeline.transient is is_transient
    (records,) = kinesis_records(simulation(5)).values()
    result = pipeline.process("s", records)
    assert result.halted and result.dead_lettered == 0
    assert not list(tmp_path.iterdir())
