"""Masking as a pipeline stage (QLDBSTREAM_MASKING): handlers see masked data, verification runs
on the original bytes, dead letters are sealed and still replay, secrets are masked when printed."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings, load_settings
from qldbstream.core.decode import RevisionDetails
from qldbstream.core.errors import ConfigurationError, PoisonRecordError
from qldbstream.io.dlq import DirectoryDeadLetterQueue
from qldbstream.pipeline.batch import Pipeline
from tests.functional.test_pipeline import MemoryDLQ
from tests.support.streams import kinesis_records, simulation

KEY = "k" * 32
DLQ_KEY = base64.b64encode(b"d" * 32).decode()
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_handlers_see_masked_data_and_dead_letters_are_sealed(tmp_path: Path) -> None:
    sim = simulation(40, seed=4)
    seen: list[Any] = []
    router = Router("crm")
    rejected: list[str] = []

    @router.revision(table="Customers")
    def on_customer(revision: RevisionDetails, ctx: HandlerContext) -> None:
        seen.append(revision.data)
        if not rejected:
            rejected.append(revision.document_id)
            raise PoisonRecordError(f"rejected ssn {revision.data['ssn']}")

    settings = Settings(
        dlq=f"dir:{tmp_path / 'dlq'}", masking=True, masking_hash_key=KEY, masking_dlq_key=DLQ_KEY
    )
    app = App(settings, handlers=[router])
    pipeline = app.pipeline()
    for shard, records in kinesis_records(sim).items():
        result = pipeline.process(shard, records)
        assert not result.verification_failures and not result.halted
    customers = [r for r in sim.ledger.revisions if r.table == "Customers" and r.data and not r.redacted]
    assert len(seen) == len(customers) >= 5
    assert all(HEX64.match(d["ssn"]) and d["card_number"].startswith("*" * 12) for d in seen)
    ((handle, letter),) = list(app.dlq.receive())
    text = Path(handle).read_text()
    original = next(r for r in sim.ledger.revisions if r.document_id == rejected[0] and r.version == 0)
    data: Any = original.data
    assert data["ssn"] not in text and data["card_number"] not in text
    assert letter.masked and letter.sealed and letter.user_record_data is None and letter.masked_data
    with pytest.raises(ValueError, match="sealed"):
        letter.kinesis_record()
    # replay with the key: the original bytes are verified again and delivered
    got: list[str] = []
    replay = Router("crm")
    replay.add_revision_handler(lambda r, ctx: got.append(r.document_id), table="Customers")
    # a handler's dead letter passed the delivery gate when it was first processed
    record = letter.kinesis_record(app.sealer)
    result = Pipeline([replay], dlq=MemoryDLQ()).process(letter.shard_id, [record], admitted=True)
    assert got == rejected and not result.verification_failures
    app.close()


def test_masking_settings_are_validated_and_secrets_masked() -> None:
    env = {
        "QLDBSTREAM_MASKING": "true",
        "QLDBSTREAM_MASKING_HASH_KEY": KEY,
        "QLDBSTREAM_MASKING_DLQ_KEY": DLQ_KEY,
        "QLDBSTREAM_DLQ": "dir:/tmp/x",
    }
    printed = json.dumps(load_settings(env).masked())
    assert KEY not in printed and DLQ_KEY not in printed
    with pytest.raises(ConfigurationError, match="masking_dlq_key"):
        load_settings({k: v for k, v in env.items() if k != "QLDBSTREAM_MASKING_DLQ_KEY"})
    with pytest.raises(ConfigurationError, match="secret key"):
        load_settings({k: v for k, v in env.items() if k != "QLDBSTREAM_MASKING_HASH_KEY"})
    with pytest.raises(ConfigurationError, match="rules"):
        load_settings({**env, "QLDBSTREAM_MASKING_RULES": "ssn=SCRAMBLE"})
    with pytest.raises(ValueError, match="sealer"):
        from qldbstream.core.masking import Masker

        Pipeline([], dlq=DirectoryDeadLetterQueue("/tmp/unused-dlq"), masker=Masker((), None))
