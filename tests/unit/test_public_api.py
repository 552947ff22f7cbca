"""The public plugin API (``qldbstream.api``): what it promises, and that the built-in handlers and
the example plugin use nothing else (docs/plugins.md, "API reference")."""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

import qldbstream
import qldbstream.api
from qldbstream.api import (
    PUBLIC_MODULES,
    BlockSummary,
    Handler,
    HandlerContext,
    JournalRecord,
    PoisonRecordError,
    RecordType,
    RetryableError,
    RevisionDetails,
    dedupe_key,
    dot,
    ion_hash,
    operation_of,
)
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import decode
from tests.support.forge import forge_stream

ROOT = Path(__file__).resolve().parents[2]
#: Plugin code: it may import only the public modules (qldbstream.api.PUBLIC_MODULES).
PLUGIN_TREES = (ROOT / "handlers" / "qldbstream_handlers", ROOT / "examples")
#: Not plugin code, though it ships in the handlers distribution: the ``qldbstream export``
#: sub-command assembles an App and a Worker (qldbstream.app / runtimes), as the CLI does.
NOT_PLUGIN_CODE = frozenset({"handlers/qldbstream_handlers/export/command.py"})
#: Opt-in public submodules (not imported by ``qldbstream.api``): every name documented.
OPT_IN = ("qldbstream.api.aws", "qldbstream.api.kinesis", "qldbstream.api.masking", "qldbstream.api.ports")
#: Public names whose docstring belongs to a module another change is rewriting (pipeline.dlq);
#: the API reference in docs/plugins.md documents them meanwhile.
DOCUMENTED_IN_DOCS_ONLY = frozenset({"DeadLetterQueue"})


def _plugin_files() -> Iterator[Path]:
    for tree in PLUGIN_TREES:
        for path in sorted(tree.rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "build" in parts or any(p.endswith(".egg-info") for p in parts):
                continue  # pip's build copies of the example
            if path.relative_to(ROOT).as_posix() not in NOT_PLUGIN_CODE:
                yield path


def _imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # ``from qldbstream import core`` is an import of a module
                yield node.lineno, f"{node.module}.{alias.name}"


def _is_private(module: str) -> bool:
    if module != "qldbstream" and not module.startswith("qldbstream."):
        return False
    if module in PUBLIC_MODULES:
        return False
    # ``from qldbstream.api import Router`` names an attribute, not a module
    parent, _, name = module.rpartition(".")
    return not (parent in PUBLIC_MODULES and name in _public_names(parent))


@cache
def _public_names(module: str) -> frozenset[str]:
    mod = importlib.import_module(module)  # ``qldbstream`` has no __all__: its __dir__ is the API
    return frozenset(getattr(mod, "__all__", None) or dir(mod))


def test_plugin_code_imports_only_the_public_api() -> None:
    files = list(_plugin_files())
    assert len(files) > 30, "the walk found no handler sources"
    offences = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, module in _imported_modules(tree):
            if _is_private(module):
                offences.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not offences, "plugins must use only qldbstream.api (docs/plugins.md):\n" + "\n".join(offences)


def test_the_import_check_names_an_internal_import() -> None:
    tree = ast.parse(
        "from qldbstream.api import Router\n"
        "from qldbstream.core.dedupe import dedupe_key\n"
        "import qldbstream.io.clients\n"
        "from qldbstream import pipeline\n"
        "from qldbstream.api.aws import aws_client\n"
    )
    flagged = [(line, m) for line, m in _imported_modules(tree) if _is_private(m)]
    assert flagged == [
        (2, "qldbstream.core.dedupe"),
        (2, "qldbstream.core.dedupe.dedupe_key"),
        (3, "qldbstream.io.clients"),
        (4, "qldbstream.pipeline"),
    ]


def test_every_api_name_is_importable_from_qldbstream_and_documented() -> None:
    assert sorted(qldbstream.api.__all__) == sorted(set(qldbstream.api.__all__))
    reference = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in qldbstream.api.__all__:
        value = getattr(qldbstream, name)
        assert value is getattr(qldbstream.api, name)
        assert f"`{name}`" in reference, f"{name} is not in docs/plugins.md"
        if name not in DOCUMENTED_IN_DOCS_ONLY:
            assert (getattr(value, "__doc__", None) or "").strip(), f"qldbstream.{name} has no docstring"
    assert set(qldbstream.api.__all__) <= set(dir(qldbstream))


@pytest.mark.parametrize("module", OPT_IN)
def test_opt_in_modules_are_documented(module: str) -> None:
    mod = importlib.import_module(module)
    assert (mod.__doc__ or "").strip()
    assert module in PUBLIC_MODULES
    reference = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in mod.__all__:
        value = getattr(mod, name)
        assert f"`{name}`" in reference, f"{module}.{name} is not in docs/plugins.md"
        if callable(value) and name not in DOCUMENTED_IN_DOCS_ONLY:
            assert (value.__doc__ or "").strip(), f"{module}.{name} has no docstring"


def test_from_qldbstream_import_works_in_a_fresh_interpreter() -> None:
    import subprocess
    import sys

    code = (
        "from qldbstream import Router, dot; import qldbstream; "
        "print(Router.__name__, 'Handler' in dir(qldbstream))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Router", "True"]


def test_the_opt_in_modules_stay_out_of_the_api_import() -> None:
    import subprocess
    import sys

    code = "import sys, qldbstream.api; print(sorted(m for m in sys.modules if m.startswith('qldbstream.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for module in (*OPT_IN, "qldbstream.io", "qldbstream.app", "qldbstream.runtimes"):
        assert f"'{module}'" not in out


# --- the names, exercised ------------------------------------------------------------------------


@cache
def _records() -> tuple[JournalRecord, ...]:
    delivery = forge_stream(3, transactions=6)
    out: list[JournalRecord] = []
    for shard in delivery.shards:
        for kinesis_record in delivery.kinesis_records(shard.shard_id):
            out.extend(decode(user) for user in deaggregate(kinesis_record))
    return tuple(out)


def _revisions() -> list[RevisionDetails]:
    return [r for r in _records() if isinstance(r, RevisionDetails)]


def test_operation_of() -> None:
    ops = {operation_of(r) for r in _revisions()}
    assert {"insert", "update"} <= ops
    for r in _revisions():
        assert (operation_of(r) == "insert") == (r.version == 0 and not r.is_deleted and not r.is_redacted)
    assert operation_of(SimpleNamespace(is_deleted=True, is_redacted=False, version=3)) == "delete"  # type: ignore[arg-type]


def test_dedupe_key_and_record_type() -> None:
    revision = _revisions()[0]
    assert dedupe_key(revision) == f"rev#{revision.document_id}#{revision.version}"
    assert revision.record_type is RecordType.REVISION_DETAILS
    block = next(r for r in _records() if isinstance(r, BlockSummary))
    assert dedupe_key(block).startswith("block#")
    assert len({dedupe_key(r) for r in _revisions()}) == len(
        {(r.document_id, r.version) for r in _revisions()}
    )


def test_dot_recomputes_a_revision_hash() -> None:
    checked = 0
    for r in _revisions():
        if r.content_hash is not None:
            assert dot(r.metadata_hash, r.content_hash) == r.hash
            checked += 1
    assert checked
    a, b = bytes(range(32)), bytes(range(1, 33))
    assert dot(a, b) == dot(b, a) and dot(a, b"") == a


def test_ion_hash_recomputes_a_revision_hash_from_values() -> None:
    assert ion_hash("user1").hex() == "b74e2b11e78f6fd8215722299f022fbb58732214c7a604ba81889ff3aa4ddad8"
    checked = 0
    for r in _revisions():
        meta = ion_hash(r.metadata)
        assert meta == r.metadata_hash
        if r.data is not None:
            assert ion_hash(r.data) == r.content_hash
            assert dot(meta, ion_hash(r.data)) == r.hash
            checked += 1
    assert checked


def test_aws_client_and_is_retryable() -> None:
    from qldbstream.api.aws import DEFAULT_MAX_ATTEMPTS, aws_client, is_retryable

    client = aws_client("kinesis", region_name="us-east-1", max_attempts=2)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert DEFAULT_MAX_ATTEMPTS >= 1

    def client_error(code: str, status: int = 400) -> ClientError:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "PutRecords")

    assert is_retryable(RetryableError("sink down"))
    assert is_retryable(TimeoutError())
    assert is_retryable(client_error("ThrottlingException"))
    assert is_retryable(client_error("Whatever", 503))
    assert not is_retryable(client_error("AccessDeniedException"))
    assert not is_retryable(PoisonRecordError("bad"))
    assert not is_retryable(ValueError("a bug"))


def test_kinesis_pack_makes_aggregates_the_deaggregator_reads() -> None:
    from qldbstream.api.kinesis import MAX_RECORD_BYTES, AggregatedRecord, PutEntry, pack
    from qldbstream.core.records import KinesisRecord

    entries = [(f"pk-{i}", None, f"record {i}".encode()) for i in range(5)]
    aggregates = list(pack(entries))
    assert len(aggregates) == 1 and isinstance(aggregates[0], AggregatedRecord)
    agg = aggregates[0]
    assert agg.count == 5 and agg.size <= MAX_RECORD_BYTES
    back = deaggregate(KinesisRecord(agg.data, "1", agg.partition_key, shard_id="shard-1"))
    assert [(u.partition_key, u.data) for u in back] == [(pk, data) for pk, _, data in entries]
    assert PutEntry(agg.data, agg.partition_key).size == agg.size


def test_kinesis_put_records_writes_every_entry() -> None:
    from qldbstream.api.kinesis import PutEntry, PutResult, put_records

    calls: list[list[dict[str, Any]]] = []

    class FakeKinesis:
        def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
            calls.append(Records)
            return {
                "FailedRecordCount": 0,
                "Records": [{"ShardId": "shard-1", "SequenceNumber": str(i)} for i in range(len(Records))],
            }

    results = put_records(FakeKinesis(), "copy", [PutEntry(b"a", "k1"), PutEntry(b"b", "k2")])  # type: ignore[arg-type]
    assert results == [PutResult("shard-1", "0"), PutResult("shard-1", "1")]
    assert [r["Data"] for r in calls[0]] == [b"a", b"b"]


def test_masking_names_mask_and_seal() -> None:
    from qldbstream.api.masking import (
        KmsSealer,
        Masker,
        masked_copy,
        masked_record_bytes,
        masking_from_settings,
        seal_record,
    )

    masker, sealer = masking_from_settings(hash_key="k" * 32)
    assert isinstance(masker, Masker) and sealer is None
    revision = next(r for r in _revisions() if r.data is not None)
    view = masked_copy(revision, masker)
    assert view.masker is masker and view.raw == revision.raw
    assert masked_record_bytes(revision) == revision.raw  # not masked by the pipeline: as it came

    class FakeKms:
        def generate_data_key(self, **_: Any) -> dict[str, bytes]:
            return {"Plaintext": bytes(32), "CiphertextBlob": b"edk"}

        def decrypt(self, **_: Any) -> dict[str, bytes]:
            return {"Plaintext": bytes(32)}

    from qldbstream.core.replica import open_sealed_record

    sealed = seal_record(KmsSealer(FakeKms(), "alias/replica"), dedupe_key(revision), revision.raw)
    assert revision.raw not in sealed
    assert open_sealed_record(sealed, KmsSealer(FakeKms(), "alias/replica")) == (
        dedupe_key(revision),
        revision.raw,
    )


def test_ports_checkpoint_and_dead_letter() -> None:
    from qldbstream.api.ports import Checkpoint, DeadLetter, sequence_key

    assert sequence_key("10") > sequence_key("9")  # integers, not strings
    assert sequence_key(None) < sequence_key("0")
    assert Checkpoint("shard-1", "10").sub_sequence_number == 0
    fields = set(DeadLetter.__dataclass_fields__)
    assert {"stage", "error_type", "shard_id", "sequence_number"} <= fields
    envelope = {
        "stage": "handler",
        "error_type": "ValueError",
        "error_message": "bad amount",
        "source": "stream s",
        "stream_arn": None,
        "shard_id": "shard-1",
        "sequence_number": "10",
        "sub_sequence_number": 2,
        "partition_key": "pk",
        "kinesis_data": None,
        "user_record_data": "AAEC",
    }
    letter = DeadLetter.from_json(json.dumps(envelope))
    assert (letter.stage, letter.error_type) == ("handler", "ValueError")
    assert DeadLetter.from_json(letter.to_json()) == letter


# --- the handler contract ------------------------------------------------------------------------


class _FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_remaining_time_reads_the_injected_clock() -> None:
    clock = _FakeClock(1000.0)
    ctx = HandlerContext("h", "shard-1", deadline=1030.0, clock=clock)
    assert ctx.remaining_time() == 30.0
    clock.now = 1042.5
    assert ctx.remaining_time() == -12.5


def test_remaining_time_keeps_the_clock_on_a_per_record_copy() -> None:
    clock = _FakeClock(5.0)
    ctx = HandlerContext("h", "shard-1", deadline=7.0, clock=clock)
    record: Any = SimpleNamespace(position=None)  # for_record reads only the record's position
    assert ctx.for_record(record, 0).remaining_time() == 2.0


def test_no_deadline_means_no_remaining_time() -> None:
    assert HandlerContext("h", None, clock=_FakeClock(1.0)).remaining_time() is None


def test_handler_error_classes_default_to_none() -> None:
    class Plain(Handler):
        pass

    class Declared(Handler):
        retryable_errors = (TimeoutError,)
        poison_errors = (ValueError,)

    assert Plain.retryable_errors == () and Plain.poison_errors == ()
    assert Declared().retryable_errors == (TimeoutError,)
    assert Declared().poison_errors == (ValueError,)
