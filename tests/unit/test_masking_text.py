"""Masking text: log records of every logger (single-mapping arguments, nested and non-Ion values,
exception messages and tracebacks, ``extra`` fields) without ever raising; PartiQL statement
literals; a block summary's statements; sealing a dead letter whose document amazon-ion cannot load."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from qldbstream.core.decode import UNREADABLE
from qldbstream.core.masking import DEFAULT_RULES, Masker
from qldbstream.core.masking_dlq import open_envelope, seal_envelope
from qldbstream.core.records import Position
from qldbstream.io.logs import JsonFormatter
from qldbstream.io.masking_logs import install_log_masking, remove_log_masking
from qldbstream.io.sealers import AesGcmSealer

KEY = "k" * 32
SSN, CARD = "123-45-6789", "4111111111111111"
masker = Masker(DEFAULT_RULES, KEY)
SSN_HASH = masker.mask_text(f"ssn={SSN}").split("=")[1]


@pytest.fixture
def logs() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger like a handler's own (``propagate = False``, its own JSON handler), masking on."""
    logger = logging.getLogger("qldbstream.handler.test_masking_text")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    installed = install_log_masking(masker)
    try:
        yield logger, stream
    finally:
        remove_log_masking(installed)
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_single_mapping_argument_is_masked_by_field_name(logs: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logs
    logger.warning("%s", {"ssn": SSN})
    logger.warning("%(ssn)s and %(card_number)s", {"ssn": SSN, "card_number": CARD})
    text = stream.getvalue()
    assert SSN not in text and CARD not in text
    assert SSN_HASH in text and "************1111" in text


def test_nested_and_non_ion_values_are_masked_and_never_raise(
    logs: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logs
    logger.info(
        "doc %s", {"customer": {"ssn": object(), "cards": [{"card_number": int(CARD)}]}, "at": {1, 2}}
    )
    logger.info("raw %r", {"ssn": SSN.encode()})
    logger.debug("extra", extra={"ssn": SSN, "documentId": "D1"})
    text = stream.getvalue()
    assert SSN not in text and CARD not in text and "************1111" in text
    assert json.loads(text.splitlines()[-1])["documentId"] == "D1"


def test_exception_messages_and_tracebacks_are_masked(logs: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logs
    try:
        raise ValueError(f"bad document {{'ssn': '{SSN}', 'card_number': '{CARD}'}}")
    except ValueError:
        logger.exception("handler failed on ssn=%s", SSN)
    entry = json.loads(stream.getvalue())
    assert SSN not in json.dumps(entry) and CARD not in json.dumps(entry)
    assert "ValueError: bad document" in entry["exception"] and SSN_HASH in entry["message"]


def test_a_record_that_cannot_be_masked_is_withheld_not_raised(
    logs: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logs

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(SSN)

    logger.warning("%d is not a number", "x")
    logger.warning("%s", Unprintable())
    lines = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert len(lines) == 2 and all("withheld" in m for m in lines) and SSN not in stream.getvalue()


def test_every_logger_is_masked_at_debug_level_botocore_included(caplog: pytest.LogCaptureFixture) -> None:
    installed = install_log_masking(masker)
    try:
        with caplog.at_level(logging.DEBUG):
            # botocore logs request dicts with bytes and other non-Ion values at DEBUG
            logging.getLogger("botocore.endpoint").debug(
                "Making request for %s with params: %s",
                "OperationModel(name=PutRecords)",
                {"body": {"Records": [{"Data": b"\x00\x01", "ssn": SSN}]}, "context": {"client": object()}},
            )
            logging.getLogger("some.plugin").info({"card_number": CARD})
    finally:
        remove_log_masking(installed)
    assert len(caplog.records) == 2
    assert SSN not in caplog.text and CARD not in caplog.text and "************1111" in caplog.text
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("some.plugin").info("after: ssn=%s", SSN)  # removed: no masking any more
    assert caplog.records[-1].getMessage() == f"after: ssn={SSN}"


@pytest.mark.parametrize(
    ("statement", "kept"),
    [
        (
            f"SELECT * FROM Customers AS c WHERE c.ssn = '{SSN}'",
            "SELECT * FROM Customers AS c WHERE c.ssn = '",
        ),
        (f"UPDATE Customers AS c SET c.card_number = '{CARD}' WHERE c.id = 'C1'", "WHERE c.id = 'C1'"),
        (f"INSERT INTO Customers VALUE {{'name': 'Ann', 'SSN': '{SSN}', 'card_number': '{CARD}'}}", "'Ann'"),
        (f"SELECT * FROM Customers c WHERE c.ssn IN ('{SSN}', '987-65-4321')", "c.ssn IN ("),
        (f"SELECT * FROM Customers c WHERE '{SSN}' = c.ssn AND c.email = 'a@b.example'", "'a@b.example'"),
        (f"SELECT * FROM Customers c WHERE c['ssn'] = UPPER('{SSN}')", "UPPER("),
        (f"SELECT * FROM Customers c WHERE c.card_number LIKE '%{CARD[-8:]}'", "LIKE '"),
        (
            f"SELECT * FROM Customers c WHERE c.social_security = {SSN.replace('-', '')}",
            "c.social_security = ",
        ),
    ],
)
def test_statement_literals_of_masked_fields_are_masked(statement: str, kept: str) -> None:
    masked = masker.mask_statement(statement)
    assert SSN not in masked and CARD not in masked and CARD[-8:] not in masked
    assert SSN.replace("-", "") not in masked and "987-65-4321" not in masked
    assert kept in masked
    assert masker.mask_statement(masked) == masked  # masking twice changes nothing


def test_statements_without_masked_fields_are_unchanged() -> None:
    for text in (
        "UPDATE Accounts AS a SET a.reviewRequired = true WHERE a.accountId = 'A1'",
        "INSERT INTO Transactions ?",
        "SELECT * FROM Customers WHERE email = ?",
    ):
        assert masker.mask_statement(text) == text


def test_a_block_summary_carries_masked_statements_once_masked() -> None:
    from qldbstream.core.decode import BlockSummary, decode_bytes
    from tests.support import forge

    ledger = forge.build_ledger(seed=3, transactions=12)
    journal = forge.forge(ledger, seed=3)
    block = next(
        decode_bytes(r.data, Position("forge", "shardId-0", "1", 0))
        for r in journal.user_records("BLOCK_SUMMARY")
        if b"statement" in r.data
    )
    assert isinstance(block, BlockSummary)
    # a statement with literals of masked fields, in a record whose bytes stay as they were
    original = block.statements[0].text
    block._statements = None
    block.statement_entries = [(f"UPDATE Customers AS c SET c.ssn = '{SSN}'", b"", b"")]
    block.mask_with(masker)
    assert block.statements[0].text == f"UPDATE Customers AS c SET c.ssn = '{SSN_HASH}'"
    masked_ion = masker.mask_record(
        {
            "payload": {
                "transactionInfo": {"statements": [{"statement": f"DELETE FROM T WHERE ssn = '{SSN}'"}]}
            }
        }
    )
    assert SSN not in str(masked_ion) and SSN_HASH in str(masked_ion)
    assert original  # the forged block had a statement to begin with


def test_a_dead_letter_whose_document_cannot_be_loaded_is_sealed_with_messages_withheld() -> None:
    raw = b"\xe0\x01\x00\xea" + f"ssn: {SSN}".encode()
    envelope: dict[str, Any] = {
        "stream_arn": "arn",
        "shard_id": "shardId-0",
        "sequence_number": "1",
        "sub_sequence_number": 0,
        "error_type": "IonException",
        "error_message": f"cannot read {SSN}",
        "traceback": f"Traceback ... IonException: {SSN}",
        "user_record_data": base64.b64encode(raw).decode(),
        "kinesis_data": None,
    }
    sealer = AesGcmSealer(b"d" * 32)
    sealed = seal_envelope(envelope, masker, sealer, UNREADABLE)
    text = json.dumps(sealed)
    assert SSN not in text and base64.b64encode(raw).decode() not in text
    assert re.search("withheld", sealed["error_message"]) and sealed["traceback"] is None
    assert base64.b64decode(open_envelope(sealed, sealer)["user_record_data"]) == raw


def test_metric_dimensions_never_carry_a_masked_value() -> None:
    from qldbstream.api.metrics import InMemoryMetrics
    from qldbstream.core.masking_text import MaskingMetrics

    inner = InMemoryMetrics()
    metrics = MaskingMetrics(inner, masker)
    metrics.incr("lookups", ssn=SSN, table="Customers")
    metrics.gauge("g", 1.0, reason=f"card_number={CARD}")
    metrics.observe("o", 2.0, handler="audit")
    assert metrics.total("lookups", ssn=SSN_HASH, table="Customers") == 1  # the backend's own API
    text = repr(vars(inner))
    assert SSN not in text and CARD not in text and "************1111" in text and "audit" in text


def test_a_masked_copy_is_written_out_masked() -> None:
    """The per-handler wrapper's copies carry their masker: replication writes the masked form."""
    from qldbstream.core.decode import RevisionDetails
    from qldbstream.core.masking import masked_copy
    from qldbstream.core.replica import is_masked_record, masked_record_bytes
    from tests.support.streams import kinesis_records, simulation

    sim = simulation(20, seed=4)
    from qldbstream.core.deaggregate import deaggregate
    from qldbstream.core.decode import decode, decode_bytes

    customers = [
        record
        for records in kinesis_records(sim).values()
        for kr in records
        for user in deaggregate(kr)
        if isinstance(record := decode(user), RevisionDetails)
        and record.table_name == "Customers"
        and record.data
    ]
    assert customers
    for record in customers:
        ssn = str(record.data["ssn"])
        view = masked_copy(record, masker)
        assert view.masker is masker and view.raw == record.raw and str(record.data["ssn"]) == ssn
        written = masked_record_bytes(view)
        assert ssn.encode() not in written and ssn.encode() in record.raw
        assert is_masked_record(decode_bytes(written, Position("copy")))


def test_pathological_text_is_masked_in_linear_time() -> None:
    """Runs of quotes after a parenthesis made the literal patterns backtrack exponentially (a log
    line could stall the worker): 60 quotes would take hours, they now take microseconds."""
    import time

    texts = [
        "x = (" + "''" * 60 + "a",
        "ssn IN (" + "'" * 60,
        "ssn: '" + "\\'" * 60,
        "c.ssn = " + "a" * 200_000,
    ]
    started = time.perf_counter()
    for text in texts:
        masker.mask_text(text)
        masker.mask_statement(text)
    assert time.perf_counter() - started < 2.0
