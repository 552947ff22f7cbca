"""Sealing dead letters with KMS envelope encryption, against the session's moto server."""

from __future__ import annotations

import json

import pytest

from qldbstream.core.masking_dlq import open_envelope, seal_envelope
from qldbstream.io.sealers import KmsSealer, masking_from_settings
from tests.handlers.test_masking import KEY, dead_letter_with_pii
from tests.support.aws import client
from tests.support.servers import MotoServer

pytestmark = pytest.mark.integration


def test_kms_sealed_dead_letter_round_trips(moto_server: MotoServer) -> None:
    kms = client("kms", moto_server.endpoint)
    key_id = kms.create_key(Description="qldbstream DLQ")["KeyMetadata"]["KeyId"]
    masker, sealer = masking_from_settings(None, KEY, dlq_kms_key_id=key_id, kms_client=lambda: kms)
    assert isinstance(sealer, KmsSealer)
    letter, record = dead_letter_with_pii()
    sealed = seal_envelope(json.loads(letter.to_json()), masker, sealer, record.data)
    for name in ("user_record_data", "kinesis_data"):
        entry = sealed["sealed"][name]
        assert sealed[name] is None and entry["alg"] == "KMS+AES-256-GCM" and entry["edk"]
    assert str(record.data["ssn"]) not in json.dumps(sealed)
    # a second sealer (another process: the replay command) opens it with KMS alone
    opened = open_envelope(sealed, KmsSealer(client("kms", moto_server.endpoint), key_id))
    assert opened["user_record_data"] == letter.user_record_data
    assert opened["kinesis_data"] == letter.kinesis_data
