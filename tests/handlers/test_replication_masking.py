"""The replication handler with masking on, against moto server (Kinesis and KMS): the default
masked form (no SSN or card number on the target, still verifiable, ``dr-check`` matches it to the
source), the explicit sealed raw copy (``raw_copy_kms_key_id``: KMS envelope encryption, opened by
``dr-check`` and compared byte for byte; a changed ciphertext is reported), and masking off."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from qldbstream_handlers.replication import ReplicationHandler

from qldbstream.app.assembly import App
from qldbstream.app.config import Settings
from qldbstream.cli import main
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.replica import is_masked_record, is_sealed_record
from qldbstream.core.verify import Verifier
from qldbstream.io.kinesis_reader import read_stream
from qldbstream.io.kinesis_writer import PutEntry, put_records
from tests.support.aws import REGION, client, kinesis_stream
from tests.support.servers import MotoServer
from tests.support.streams import kinesis_records, simulation

pytestmark = pytest.mark.integration

HASH_KEY = "h" * 32
DLQ_KEY = base64.b64encode(b"d" * 32).decode()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def streams(moto_server: MotoServer) -> Iterator[tuple[Any, str, str]]:
    kinesis = client("kinesis", moto_server.endpoint)
    with (
        kinesis_stream(kinesis, 1, prefix="src") as source,
        kinesis_stream(kinesis, 2, prefix="dr") as target,
    ):
        yield kinesis, source, target


def pii(sim: Any) -> list[str]:
    """Every SSN and card number of the simulated ledger (the values that must not leak)."""
    values: set[str] = set()
    for rev in sim.ledger.revisions:
        data: Any = rev.data
        if rev.table == "Customers" and data:
            values.update(str(data[f]) for f in ("ssn", "card_number"))
    assert len(values) >= 6
    return sorted(values)


def leaks(blob: bytes, values: list[str]) -> list[str]:
    """The values found in ``blob`` as text, base64 (any alignment) or hex."""
    found = []
    for value in values:
        raw = value.encode()
        forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
        for shift in range(3):  # base64 of the value at any offset within a larger text
            encoded = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0 :][:-4]
            forms.append(encoded)
        if any(f and f in blob for f in forms):
            found.append(value)
    return found


def replicate(moto: MotoServer, target: str, sim: Any, *, masking: bool, **extra: str) -> ReplicationHandler:
    settings = {
        "targets": "west",
        "west_stream": target,
        "west_region": REGION,
        "west_endpoint": moto.endpoint,
    }
    handler = ReplicationHandler(
        {**settings, **extra},
        clients=lambda c: client("kinesis", moto.endpoint),
        kms_clients=lambda c: client("kms", moto.endpoint),
    )
    app_settings = Settings(
        masking=masking,
        masking_hash_key=HASH_KEY,
        masking_dlq_key=DLQ_KEY,
        dlq=f"dir:/tmp/qs-dlq-{uuid.uuid4().hex}",
    )
    app = App(app_settings, handlers=[handler])
    try:
        pipeline = app.pipeline()
        for shard, records in kinesis_records(sim).items():
            result = pipeline.process(shard, records)
            assert not result.halted and not result.verification_failures
    finally:
        app.close()
    return handler


def target_user_records(kinesis: Any, target: str) -> list[bytes]:
    return [u.data for kr in read_stream(kinesis, target, poll_interval=0.05) for u in deaggregate(kr)]


def dr_check(
    capsys: pytest.CaptureFixture[str], moto: MotoServer, source: str, target: str
) -> tuple[int, Any]:
    common = ["--endpoint-url", moto.endpoint, "--region", REGION, "--poll-interval", "0.05"]
    code = main(["dr-check", *common, "--source", source, "--target", target, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_masking_on_the_target_gets_the_masked_form_and_dr_check_matches_it(
    moto_server: MotoServer, streams: tuple[Any, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    kinesis, source, target = streams
    sim = simulation(30, seed=8, aggregate=False)
    put_records(kinesis, source, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
    replicate(moto_server, target, sim, masking=True)
    written = target_user_records(kinesis, target)
    assert written and not leaks(b"".join(written), pii(sim))
    verifier, masked = Verifier(), 0
    for data in written:
        record = decode(deaggregate_one(data))
        assert not verifier.verify(record)  # the masked form still verifies (V2)
        if (
            isinstance(record, RevisionDetails)
            and record.table_name == "Customers"
            and is_masked_record(record)
        ):
            document = record.ion["payload"]["revision"]["maskedData"]
            assert len(document["ssn"]) == 64 and str(document["card_number"]).startswith("*" * 12)
            masked += 1
    customers = [r for r in sim.ledger.revisions if r.table == "Customers" and r.data and not r.redacted]
    assert masked == len(customers) > 0
    code, report = dr_check(capsys, moto_server, source, target)
    (result,) = report["targets"]
    assert code == 0 and result["matched"] == result["expected"] > 0, result["counts"]


def test_a_raw_copy_is_sealed_with_kms_and_dr_check_opens_it(
    moto_server: MotoServer, streams: tuple[Any, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    kinesis, source, target = streams
    kms = client("kms", moto_server.endpoint)
    key_id = kms.create_key(Description="qldbstream replica")["KeyMetadata"]["KeyId"]
    sim = simulation(30, seed=9, aggregate=False)
    put_records(kinesis, source, [PutEntry(d.data, d.partition_key) for d in sim.deliveries])
    replicate(moto_server, target, sim, masking=True, raw_copy_kms_key_id=key_id, aggregate="true")
    written = target_user_records(kinesis, target)
    assert written and all(is_sealed_record(d) for d in written)
    assert not leaks(b"".join(written), pii(sim))
    code, report = dr_check(capsys, moto_server, source, target)
    (result,) = report["targets"]
    assert code == 0 and result["matched"] == result["expected"] > 0, result["counts"]
    # a ciphertext changed on the target: reported, not accepted
    envelope = json.loads(written[0])
    ct = bytearray(base64.b64decode(envelope["sealed"]["ct"]))
    ct[0] ^= 1
    envelope["sealed"]["ct"] = base64.b64encode(bytes(ct)).decode()
    put_records(kinesis, target, [PutEntry(json.dumps(envelope).encode(), "tampered")])
    code, report = dr_check(capsys, moto_server, source, target)
    (result,) = report["targets"]
    assert code == 1 and result["counts"]["unreadable"] == 1
    assert result["unreadable"][0]["type"] == "SealedRecordError"


def test_masking_off_the_target_holds_the_bytes_as_received(
    moto_server: MotoServer, streams: tuple[Any, str, str]
) -> None:
    kinesis, _, target = streams
    sim = simulation(30, seed=8, aggregate=False)
    replicate(moto_server, target, sim, masking=False)
    written = target_user_records(kinesis, target)
    assert set(leaks(b"".join(written), pii(sim))) == set(pii(sim))  # the scan finds them when they are there


def deaggregate_one(data: bytes) -> Any:
    from qldbstream.core.records import KinesisRecord

    (user,) = deaggregate(KinesisRecord(data, "1", "pk"))
    return user
