"""Masking: rules on nested Ion data with types kept, the keyed hash, partial masking, the seed's
defaults on the simulated bank's Customers, the log filter, the per-handler wrapper, and sealed
dead letters that humans can read without PII while replay still verifies the original bytes."""

from __future__ import annotations

import base64
import json
import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.core import IonType
from cryptography.exceptions import InvalidTag
from qldbstream_handlers.audit import AuditLogHandler
from qldbstream_handlers.masking import MaskingHandler, parse_masking_settings

from qldbstream.api.handler import HandlerContext
from qldbstream.api.router import Router
from qldbstream.app.config import load_settings
from qldbstream.core.deaggregate import deaggregate
from qldbstream.core.decode import RevisionDetails, decode
from qldbstream.core.errors import ConfigurationError, PoisonRecordError
from qldbstream.core.masking import DEFAULT_RULES, Masker, MaskingRule, MaskingType, masked_copy, parse_rules
from qldbstream.core.masking_dlq import open_envelope, seal_envelope
from qldbstream.io.masking_logs import MaskingLogFilter
from qldbstream.io.sealers import AesGcmSealer, masking_from_settings
from qldbstream.pipeline.batch import Pipeline, PipelineSettings
from qldbstream.pipeline.dlq import DeadLetter
from qldbstream.pipeline.reliability import RetryPolicy
from qldbstream.pipeline.stores import InMemoryDedupeStore
from tests.functional.test_pipeline import FakeTime, MemoryDLQ
from tests.support.streams import kinesis_records, simulation

KEY = "k" * 32
HEX64 = re.compile(r"^[0-9a-f]{64}$")

DOC = simpleion.loads(
    """{
      name: "Ines Novak",
      ssn: "912-34-5678",
      SSN: 'sym-ssn',
      card_number: "4000123412341234",
      social_security: 123456789,
      tags: vip::["a", "b"],
      accounts: [{id: "AC1", credit_card: "4000999988887777"}, {id: "AC2", credit_card: null.string}],
      address: {street: "1 Mill Road", ssn: pii::"912-00-0000", secret: {{aGVsbG8=}}},
      dateOfBirth: 1980-01-02T,
      riskScore: 0.25,
      ssn: "second-value"
    }"""
)


def ion_types(value: Any) -> dict[str, Any]:
    return {k: (v.ion_type, tuple(a.text for a in v.ion_annotations)) for k, v in value.iteritems()}


def test_rules_apply_at_any_depth_and_keep_ion_types() -> None:
    masked = Masker(DEFAULT_RULES, KEY).mask(DOC)
    assert ion_types(masked) == ion_types(DOC)  # same fields, same order, same types and annotations
    ssns = masked.get_all_values("ssn")
    assert len(ssns) == 2 and all(HEX64.match(str(v)) for v in ssns)  # duplicate fields both masked
    assert masked["SSN"].ion_type == IonType.SYMBOL and HEX64.match(masked["SSN"].text)  # any case
    assert masked["social_security"].ion_type == IonType.INT and masked["social_security"] != 123456789
    assert masked["card_number"] == "************1234"
    assert masked["accounts"][0]["credit_card"] == "************7777" and masked["accounts"][0]["id"] == "AC1"
    assert masked["accounts"][1]["credit_card"].ion_type == IonType.STRING  # a typed null stays one
    nested = masked["address"]["ssn"]
    assert HEX64.match(nested) and [a.text for a in nested.ion_annotations] == ["pii"]
    for unmasked in ("name", "tags", "dateOfBirth", "riskScore"):
        assert simpleion.dumps(masked[unmasked]) == simpleion.dumps(DOC[unmasked])
    assert masked["address"]["street"] == "1 Mill Road"
    # the original is untouched
    assert DOC.get_all_values("ssn")[0] == "912-34-5678" and DOC["card_number"] == "4000123412341234"


def test_keyed_hash_is_stable_joinable_and_depends_on_the_key() -> None:
    one, again, other = (
        Masker(DEFAULT_RULES, KEY),
        Masker(DEFAULT_RULES, KEY),
        Masker(DEFAULT_RULES, "x" * 32),
    )
    assert one.mask(DOC)["ssn"] == again.mask(DOC)["ssn"]  # stable across instances and runs
    first_ssn = one.mask(DOC).get_all_values("ssn")[0]
    assert one.mask({"ssn": "912-34-5678"})["ssn"] == first_ssn  # joinable across documents
    assert one.mask(DOC)["ssn"] != other.mask(DOC)["ssn"]  # another key, another pseudonym
    assert one.mask({"ssn": "912-34-5679"})["ssn"] != first_ssn
    import hashlib
    import hmac

    assert (
        one.mask({"ssn": "912-34-5678"})["ssn"]
        == hmac.new(KEY.encode(), b"912-34-5678", hashlib.sha256).hexdigest()
    )


def test_partial_and_redact() -> None:
    rules = (
        MaskingRule("card_number", MaskingType.PARTIAL, 4),
        MaskingRule("pin", MaskingType.PARTIAL, 4),
        MaskingRule("phone", MaskingType.PARTIAL, 2),
        MaskingRule("address|dateOfBirth|blob", MaskingType.REDACT),
    )
    masked = Masker(rules).mask(
        simpleion.loads(
            '{card_number: "4000123412341234", pin: "1234", phone: 447946000, '
            'address: a::{street: "x"}, dateOfBirth: 1980-01-02T, blob: {{aGVsbG8=}}}'
        )
    )
    assert masked["card_number"] == "************1234"
    assert masked["pin"] == "****"  # no longer than what would be kept: nothing is shown
    assert masked["phone"] == "*******00" and masked["phone"].ion_type == IonType.STRING
    assert masked["address"].ion_type == IonType.STRUCT and type(masked["address"]).__name__ == "IonPyNull"
    assert [a.text for a in masked["address"].ion_annotations] == ["a"]
    assert (
        masked["dateOfBirth"].ion_type == IonType.TIMESTAMP
        and type(masked["dateOfBirth"]).__name__ == "IonPyNull"
    )
    assert simpleion.dumps(masked, binary=False).endswith("blob:null.blob}")
    # plain Python values work too
    assert Masker(rules).mask({"card_number": "4000123412341234", "x": [1]}) == {
        "card_number": "************1234",
        "x": [1],
    }


def test_rules_from_settings() -> None:
    seed = json.dumps(
        {
            "rules": [
                {"field_pattern": "ssn|social_security", "masking_type": "HASH"},
                {"field_pattern": "credit_card|card_number", "masking_type": "PARTIAL", "visible_chars": 4},
            ]
        }
    )
    assert parse_rules(seed) == DEFAULT_RULES
    assert parse_rules("ssn|social_security=HASH; credit_card|card_number=PARTIAL:4") == DEFAULT_RULES
    assert parse_rules("email=REDACT")[0].masking_type is MaskingType.REDACT
    for bad in ("ssn", "ssn=SCRAMBLE", "[(=HASH", '[{"field_pattern": "x"}]'):
        with pytest.raises(ConfigurationError):
            parse_rules(bad)
    with pytest.raises(ConfigurationError, match="secret key"):
        Masker(DEFAULT_RULES, None)
    with pytest.raises(ConfigurationError, match="secret key"):
        Masker(DEFAULT_RULES, "short")
    with pytest.raises(ConfigurationError, match="unknown settings"):
        parse_masking_settings({"key": KEY})
    assert "k" * 32 not in repr(Masker(DEFAULT_RULES, KEY))


def test_the_hash_key_is_masked_when_the_configuration_is_printed() -> None:
    settings = load_settings({"QLDBSTREAM_HANDLERS": "audit", "QLDBSTREAM_HANDLER_AUDIT__HASH_KEY": KEY})
    assert settings.masked()["handler_settings"]["audit"]["hash_key"] == "****"
    assert KEY not in json.dumps(settings.masked())


# --- the simulated bank ------------------------------------------------------------------------------


def customer_revisions() -> list[RevisionDetails]:
    sim = simulation(40, seed=4)
    out = []
    for records in kinesis_records(sim).values():
        for kr in records:
            for user in deaggregate(kr):
                record = decode(user)
                if isinstance(record, RevisionDetails) and record.table_name == "Customers" and record.data:
                    out.append(record)
    return out


def test_seed_defaults_on_the_simulated_customers() -> None:
    masker = Masker(DEFAULT_RULES, KEY)
    customers = customer_revisions()
    assert len(customers) >= 5
    for record in customers:
        view = masked_copy(record, masker)
        original, masked = record.data, view.data
        assert HEX64.match(masked["ssn"]) and masked["ssn"] != original["ssn"]
        assert masked["card_number"] == "*" * 12 + original["card_number"][-4:]
        assert ion_types(masked) == ion_types(original)
        for name in ("customerId", "name", "email", "address", "dateOfBirth", "segments", "createdAt"):
            assert simpleion.dumps(masked[name]) == simpleion.dumps(original[name])
        # the copy keeps identity and the verified bytes; the record itself is untouched
        assert (view.document_id, view.version, view.hash, view.raw) == (
            record.document_id,
            record.version,
            record.hash,
            record.raw,
        )
        assert view.tx_time == record.tx_time and record.data["ssn"] == original["ssn"]
        assert original["ssn"] not in masker.masked_text(view.ion)


def test_a_wrapped_handler_only_sees_masked_data(tmp_path: Path) -> None:
    sim = simulation(40, seed=4)
    seen: list[Any] = []
    router = Router("people")

    @router.revision(table="Customers", predicate=lambda r: r.data is not None and HEX64.match(r.data["ssn"]))
    def on_customer(revision: RevisionDetails, ctx: HandlerContext) -> None:
        seen.append(revision.data)

    audit_file = tmp_path / "audit.jsonl"
    handlers = [
        MaskingHandler.from_settings(router, {"hash_key": KEY}),
        MaskingHandler.from_settings(
            AuditLogHandler({"path": str(audit_file), "data": "true"}), {"hash_key": KEY}
        ),
    ]
    t = FakeTime()
    pipeline = Pipeline(handlers, dlq=MemoryDLQ(), store=InMemoryDedupeStore(clock=t.clock), clock=t.clock)
    for shard, records in kinesis_records(sim).items():
        result = pipeline.process(shard, records)
        assert not result.halted and not result.verification_failures  # verified on the original bytes
    customers = [
        r for r in sim.ledger.revisions if r.table == "Customers" and r.data is not None and not r.redacted
    ]
    assert len(seen) == len(customers) >= 5  # the route's predicate saw masked data too
    text = audit_file.read_text()
    assert "ssn" in text and "card_number" in text
    for rev in customers:
        data: Any = rev.data
        assert data["ssn"] not in text and data["card_number"] not in text
        assert data["card_number"][-4:] in text


def test_log_filter_masks_structured_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("qldbstream.test.masking")
    masker = Masker(DEFAULT_RULES, KEY)
    log_filter = MaskingLogFilter(masker)
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("document %s amount %s", DOC, Decimal("1.50"))
            logger.info({"card_number": "4000123412341234"})
    finally:
        logger.removeFilter(log_filter)
    text = caplog.text
    assert "912-34-5678" not in text and "4000123412341234" not in text
    assert "************1234" in text and "amount 1.50" in text and "Ines Novak" in text


# --- the dead-letter queue ------------------------------------------------------------------------------


def dead_letter_with_pii() -> tuple[DeadLetter, Any]:
    """A handler that fails on a customer, quoting the document in its error: a handler-stage letter."""
    sim = simulation(40, seed=4)
    router = Router("crm")

    @router.revision(table="Customers")
    def on_customer(revision: RevisionDetails, ctx: HandlerContext) -> None:
        raise PoisonRecordError(
            f"customer rejected: ssn {revision.data['ssn']} card {revision.data['card_number']}"
        )

    dlq = MemoryDLQ()
    t = FakeTime()
    pipeline = Pipeline(
        [router],
        dlq=dlq,
        store=InMemoryDedupeStore(clock=t.clock),
        settings=PipelineSettings(retry=RetryPolicy(max_attempts=1)),
        clock=t.clock,
        sleep=t.sleep,
    )
    shard, records = next(iter(kinesis_records(sim).items()))
    pipeline.process(shard, records)
    letter = dlq.letters[0]
    record = decode_letter(letter)
    return letter, record


def decode_letter(letter: DeadLetter) -> RevisionDetails:
    record = decode(next(iter(deaggregate(letter.kinesis_record()))))
    assert isinstance(record, RevisionDetails)
    return record


def test_a_sealed_dead_letter_hides_pii_and_still_replays_the_verified_original() -> None:
    letter, record = dead_letter_with_pii()
    ssn, card = str(record.data["ssn"]), str(record.data["card_number"])
    assert ssn in letter.error_message and ssn in (letter.traceback or "")
    masker, sealer = masking_from_settings(None, KEY, base64.b64encode(b"d" * 32).decode())
    assert sealer is not None
    sealed = seal_envelope(json.loads(letter.to_json()), masker, sealer, record.data)
    text = json.dumps(sealed)
    for secret in (ssn, card, letter.user_record_data, letter.kinesis_data):
        assert secret and secret not in text
    assert sealed["masked"] is True and card[-4:] in sealed["masked_data"]
    assert HEX64.match(simpleion.loads(sealed["masked_data"])["ssn"])
    assert "****" in sealed["error_message"] and sealed["document_id"] == letter.document_id
    # replay: open the envelope and re-drive the original bytes through a pipeline that verifies
    replayed = DeadLetter.from_json(json.dumps(open_envelope(sealed, sealer)))
    assert replayed.user_record_data == letter.user_record_data
    got: list[str] = []
    router = Router("crm")
    router.add_revision_handler(lambda r, ctx: got.append(r.document_id), table="Customers")
    # a handler's dead letter passed the delivery gate when it was first processed (its block is not here)
    result = Pipeline([router], dlq=MemoryDLQ()).process(
        replayed.shard_id, [replayed.kinesis_record()], admitted=True
    )
    assert got == [letter.document_id] and not result.verification_failures
    # the ciphertext is bound to the record's position: it cannot be moved to another envelope
    moved = {**sealed, "sequence_number": "1"}
    with pytest.raises(InvalidTag):
        open_envelope(moved, sealer)
    with pytest.raises(ConfigurationError):
        AesGcmSealer(b"short")
