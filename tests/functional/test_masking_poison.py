"""A record the scanner may accept but amazon-ion cannot load (a string with invalid UTF-8, its
revision hash recomputed so that it verifies; a scanner that refuses it makes it a decode-stage
poison record instead) is dead-lettered once - with masking on or off:
sealing its dead letter must not raise (it did, and the shard stalled) - and the letter gives
back its exact bytes, sealed when masking is on."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.errors import DecodeError
from qldbstream.core.records import KinesisRecord
from qldbstream.core.scan import scan_record
from qldbstream.pipeline.dead_letters import seal
from tests.support.fakes import MemoryDLQ
from tests.support.streams import kinesis_records, simulation

HASH_KEY = "h" * 32
DLQ_KEY = base64.b64encode(b"d" * 32).decode()


def unloadable_customer() -> tuple[KinesisRecord, Any]:
    """A Customers revision whose ``name`` holds invalid UTF-8, its hash recomputed (V2 holds)."""
    sim = simulation(20, seed=5, aggregate=False)
    for records in kinesis_records(sim).values():
        for kr in records:
            for user in deaggregate(kr):
                record = decode(user)
                if isinstance(record, RevisionDetails) and record.table_name == "Customers" and record.data:
                    data = record.data
                    name = str(data["name"]).encode()
                    raw = bytearray(record.raw)
                    at = raw.index(name)
                    raw[at] = 0xFF  # not UTF-8 (the same length: every length field stays right)
                    old_hash = record.hash
                    try:
                        expected = scan_record(bytes(raw))[15]
                    except DecodeError:  # the scanner refuses it: the decode stage dead-letters it
                        return KinesisRecord(
                            bytes(raw), kr.sequence_number, kr.partition_key, kr.shard_id
                        ), data
                    patched = bytes(raw).replace(old_hash, expected)
                    assert patched.count(expected) == 1
                    return KinesisRecord(patched, kr.sequence_number, kr.partition_key, kr.shard_id), data
    raise AssertionError("no customer in the simulation")


@pytest.mark.parametrize("masking", [True, False])
def test_a_record_amazon_ion_cannot_load_is_dead_lettered_once(masking: bool) -> None:
    kr, data = unloadable_customer()
    router = Router("crm")
    seen: list[str] = []

    @router.revision(table="Customers")
    def on_customer(revision: RevisionDetails, ctx: HandlerContext) -> None:
        seen.append(str(revision.data["name"]))  # amazon-ion raises here

    dlq = MemoryDLQ()
    settings = Settings(
        masking=masking, masking_hash_key=HASH_KEY, masking_dlq_key=DLQ_KEY, dlq="dir:/unused"
    )
    app = App(settings, handlers=[router], dlq=dlq)
    try:
        pipeline = app.pipeline()
        result = pipeline.process(kr.shard_id, [kr], admitted=True)
        assert not result.halted and result.checkpoint is not None and not seen
        assert result.dead_lettered == 1
    finally:
        app.close()
    (letter,) = dlq.letters
    assert letter.masked is masking
    if masking:
        text = letter.to_json()
        assert str(data["ssn"]) not in text and str(data["card_number"]) not in text
        assert base64.b64encode(kr.data).decode() not in text
        assert app.sealer is not None
        assert letter.kinesis_record(app.sealer).data == kr.data  # the exact bytes, for replay
        assert json.loads(text)["sealed"]
    else:
        assert letter.kinesis_record().data == kr.data


def test_sealing_the_letter_of_a_record_amazon_ion_cannot_load_does_not_raise() -> None:
    """Whatever the scanner accepts: the pipeline's sealing step (which ran outside the guarded
    DLQ write) gets a stand-in for data amazon-ion cannot load, seals the bytes, withholds the
    messages."""
    from qldbstream.core.decode import UNREADABLE
    from qldbstream.core.masking import Masker
    from qldbstream.io.sealers import AesGcmSealer
    from qldbstream.pipeline.batch import Pipeline
    from qldbstream.pipeline.dlq import envelope_for

    sim = simulation(20, seed=5, aggregate=False)
    kr, user, record = next(
        (kr, user, record)
        for records in kinesis_records(sim).values()
        for kr in records
        for user in deaggregate(kr)
        if isinstance(record := decode(user), RevisionDetails)
        and record.table_name == "Customers"
        and record.data
    )
    ssn = str(record.data["ssn"])
    broken = bytearray(record.raw)
    broken[broken.index(str(record.data["name"]).encode())] = 0xFF
    record.raw = bytes(broken)  # what amazon-ion cannot load, whether the scanner would have said so or not
    masker, sealer = Masker(key=HASH_KEY), AesGcmSealer(b"d" * 32)
    record.mask_with(masker)
    assert record.original_ion()["payload"]["revision"]["data"] is UNREADABLE
    pipeline = Pipeline([], dlq=MemoryDLQ(), masker=masker, sealer=sealer)
    letter = envelope_for("handler", ValueError(f"cannot read ssn={ssn}"), kr, user, handler="crm")
    sealed = seal(pipeline, letter, record)
    assert sealed.sealed and sealed.masked_data is None and ssn not in sealed.to_json()
    assert "withheld" in sealed.error_message and sealed.kinesis_record(sealer).data == user.data
