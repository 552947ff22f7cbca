"""The static analysis on small synthetic packages: what it must find, and what it must not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.deploy.callgraph import AnalysisError, CodeIndex, Op, Reach, iam_actions


def index_of(tmp_path: Path, **modules: str) -> CodeIndex:
    """A package ``app`` with the given modules (``name=source``)."""
    root = tmp_path / "app"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return CodeIndex({"app": root})


def ops_of(index: CodeIndex, *roots: str) -> set[tuple[str, str]]:
    return {(o.service, o.operation) for o in Reach(index, list(roots)).ops()}


def test_calls_references_paginators_waiters_and_dispatchers(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        m="""
        from functools import partial
        from typing import Any, TYPE_CHECKING
        if TYPE_CHECKING:
            from mypy_boto3_kinesis import KinesisClient

        def read(kinesis: KinesisClient) -> None:
            fetch = partial(kinesis.get_records, ShardIterator="x")   # a reference, not a call
            fetch()

        class Store:
            def __init__(self, client: Any) -> None:
                self.client = client

            def _call(self, method: str, **kwargs: Any) -> Any:
                return getattr(self.client, method)(**kwargs)

            def put(self) -> None:
                self._call("put_item", TableName="t", Item={})
                self.client.get_waiter("table_exists").wait(TableName="t")

        def listing(s3_client: Any) -> None:
            s3_client.get_paginator("list_objects_v2").paginate(Bucket="b")
            s3_client.upload_file("f", "b", "k")

        def main(client: Any) -> None:
            read(client)
            Store(client).put()
            listing(client)
        """,
    )
    found = ops_of(index, "app.m:main")
    assert found == {
        ("kinesis", "GetRecords"),
        ("dynamodb", "PutItem"),
        ("dynamodb", "DescribeTable"),  # the table_exists waiter
        ("s3", "ListObjectsV2"),
        ("s3", "PutObject"),
        ("s3", "CreateMultipartUpload"),
        ("s3", "UploadPart"),
        ("s3", "CompleteMultipartUpload"),
        ("s3", "AbortMultipartUpload"),
    }
    actions = iam_actions(Reach(index, ["app.m:listing"]).ops())
    assert "s3:ListBucket" in actions and "s3:ListObjectsV2" not in actions


def test_only_reachable_and_instantiated_code_counts(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        m="""
        from typing import Any, Protocol

        class Queue(Protocol):
            def put(self, body: str) -> None: ...
            def receive(self) -> None: ...

        class SqsQueue:
            def __init__(self, client: Any) -> None:
                self.client = client
            def put(self, body: str) -> None:
                self.client.send_message(QueueUrl="u", MessageBody=body)
            def receive(self) -> None:
                self.client.receive_message(QueueUrl="u")

        class Checkpoints:
            def __init__(self, client: Any) -> None:
                self.client = client
            def get(self) -> None:
                self.client.get_item(TableName="t", Key={})

        class Failure:
            check = "V1"

        class Pipeline:
            def __init__(self, queue: Queue) -> None:
                self.queue = queue
            def run(self, failures: list[Failure], response: dict[str, str]) -> None:
                self.queue.put("x")              # Protocol: every instantiated implementation
                response.get("Records")          # a dict: never Checkpoints.get
                for f in failures:
                    print(f.check)               # data, not a method call

        def lambda_main(client: Any) -> None:
            Pipeline(SqsQueue(client)).run([], {})

        def replay_main(client: Any) -> None:
            SqsQueue(client).receive()
            Checkpoints(client).get()
        """,
    )
    assert ops_of(index, "app.m:lambda_main") == {("sqs", "SendMessage")}
    assert ops_of(index, "app.m:replay_main") == {("sqs", "ReceiveMessage"), ("dynamodb", "GetItem")}


def test_unknown_receivers_are_dispatched_by_name_except_builtin_names(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        m="""
        from typing import Any

        class Sink:
            def __init__(self, client: Any) -> None:
                self.client = client
            def emit(self) -> None:
                self.client.publish(TopicArn="t", Message="m")
            def get(self) -> None:
                self.client.get_object(Bucket="b", Key="k")

        def main(client, things):
            sinks = [Sink(client)]
            for s in things:
                s.emit()          # unknown type: every instantiated class with emit()
                s.get()           # a builtin method name: not dispatched
        """,
    )
    assert ops_of(index, "app.m:main") == {("sns", "Publish")}


def test_framework_subclasses_and_super_calls(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        m="""
        from typing import Any
        from somelib import RecordProcessorBase

        class Base:
            def __init__(self, client: Any) -> None:
                self.client = client
                self.client.describe_stream_summary(StreamName="s")

        class Processor(RecordProcessorBase):     # the framework calls its methods
            def process_records(self, client: Any) -> None:
                client.put_records(StreamName="s", Records=[])

        class Child(Base):
            def __init__(self, client: Any) -> None:
                super().__init__(client)

        def main(client):
            Processor()
            Child(client)
        """,
    )
    assert ops_of(index, "app.m:main") == {("kinesis", "PutRecords"), ("kinesis", "DescribeStreamSummary")}


def test_an_ambiguous_operation_needs_a_hint(tmp_path: Path) -> None:
    """put_record is Kinesis and Firehose: without a hint in the module the analysis refuses to guess."""
    index = index_of(tmp_path, m="def f(client):\n    client.put_record(Record={})\n")
    with pytest.raises(AnalysisError, match="put_record"):
        Reach(index, ["app.m:f"]).ops()
    hinted = index_of(
        tmp_path / "h", m='def f(client):\n    client.put_record(Record={})\n\nc = boto3.client("firehose")\n'
    )
    assert ops_of(hinted, "app.m:f") == {("firehose", "PutRecord")}


def test_computed_operation_names_are_reported(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        m="""
        def run(clients, service, action):
            method = action.lower()
            return getattr(clients.client(service), method)()
        """,
    )
    reach = Reach(index, ["app.m:run"])
    assert reach.dynamic() == {"app/m.py:4"}


def test_path_to_explains_reachability(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        a="from app.b import helper\n\ndef main(client):\n    helper(client)\n",
        b="def helper(client):\n    client.send_message(QueueUrl='u', MessageBody='b')\n",
    )
    reach = Reach(index, ["app.a:main"])
    op = next(iter(reach.ops()))
    assert op == Op("sqs", "SendMessage")
    assert reach.path_to(reach.sites(op)[0]) == ["app.a:main", "app.b:helper"]
