"""The dead-letter sealers, and masking built from settings (see ``docs/handlers/masking.md``).

A :class:`~qldbstream.core.masking_dlq.Sealer` encrypts the raw bytes of a dead-lettered record
(:func:`~qldbstream.core.masking_dlq.seal_envelope`) so that only replay can read them:
:class:`AesGcmSealer` under a static key (``dlq_key``), or :class:`KmsSealer`, envelope encryption
with a fresh KMS data key (``dlq_kms_key_id``; the KMS client is passed in). These hold keys and
draw nonces (``os.urandom``), so they live here at the edge; the masking itself is pure
(:mod:`qldbstream.core.masking`). :func:`masking_from_settings` builds the masker and the sealer
the settings ask for.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from qldbstream.core.errors import ConfigurationError
from qldbstream.core.masking import DEFAULT_RULES, Masker, parse_rules
from qldbstream.core.masking_dlq import Sealer

__all__ = ["AesGcmSealer", "KmsSealer", "masking_from_settings"]


class AesGcmSealer:
    """AES-256-GCM under a static key (``dlq_key``: 32 bytes, base64); ``context`` is the AAD."""

    def __init__(self, key: bytes, key_id: str = "static") -> None:
        if len(key) != 32:
            raise ConfigurationError("masking: the DLQ key must be 32 bytes (base64 of 32 random bytes)")
        self._key = key
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"AesGcmSealer({self.key_id!r})"

    def seal(self, data: bytes, context: str) -> dict[str, str]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        sealed = AESGCM(self._key).encrypt(nonce, data, context.encode("utf-8"))
        return {"alg": "AES-256-GCM", "kid": self.key_id, "nonce": _b64(nonce), "ct": _b64(sealed)}

    def open(self, sealed: Mapping[str, str], context: str) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._key).decrypt(
            base64.b64decode(sealed["nonce"]), base64.b64decode(sealed["ct"]), context.encode("utf-8")
        )


class KmsSealer:
    """Envelope encryption: a fresh data key from KMS per record (``GenerateDataKey``), AES-256-GCM
    locally, the encrypted data key stored with the ciphertext; replay asks KMS to decrypt it."""

    def __init__(self, client: Any, key_id: str) -> None:
        self.client = client
        self.key_id = key_id
        #: data keys already decrypted (a batch sealed with :meth:`batch` shares one)
        self._opened: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"KmsSealer({self.key_id!r})"

    def seal(self, data: bytes, context: str) -> dict[str, str]:
        return self.batch().seal(data, context)

    def batch(self) -> Sealer:
        """A sealer that seals many records under one fresh data key (one ``GenerateDataKey``
        call): for a batch that is written together, e.g. a replica's flush."""
        response = self.client.generate_data_key(KeyId=self.key_id, KeySpec="AES_256")
        return _DataKeySealer(
            AesGcmSealer(response["Plaintext"], self.key_id), _b64(response["CiphertextBlob"])
        )

    def open(self, sealed: Mapping[str, str], context: str) -> bytes:
        edk = sealed["edk"]
        key = self._opened.get(edk)
        if key is None:
            key = self.client.decrypt(CiphertextBlob=base64.b64decode(edk))["Plaintext"]
            if len(self._opened) >= 1024:
                self._opened.clear()
            self._opened[edk] = key
        return AesGcmSealer(key, self.key_id).open(sealed, context)


class _DataKeySealer:
    """Seals under one KMS data key (see :meth:`KmsSealer.batch`); opening is :class:`KmsSealer`'s."""

    def __init__(self, sealer: AesGcmSealer, edk: str) -> None:
        self._sealer = sealer
        self._edk = edk

    def seal(self, data: bytes, context: str) -> dict[str, str]:
        return {**self._sealer.seal(data, context), "alg": "KMS+AES-256-GCM", "edk": self._edk}

    def open(self, sealed: Mapping[str, str], context: str) -> bytes:
        return self._sealer.open(sealed, context)


def masking_from_settings(
    rules: str | None = None,
    hash_key: str | None = None,
    dlq_key: str | None = None,
    dlq_kms_key_id: str | None = None,
    kms_client: Callable[[], Any] | None = None,
) -> tuple[Masker, Sealer | None]:
    """The masker (the seed's rules unless ``rules`` is given) and the DLQ sealer, from settings.

    ``dlq_key`` is base64 of 32 random bytes; ``dlq_kms_key_id`` (a KMS key id, ARN or alias)
    wins over it. Without either, dead letters cannot be sealed (see ``docs/handlers/masking.md``).
    """
    masker = Masker(parse_rules(rules) if rules else DEFAULT_RULES, hash_key or None)
    sealer: Sealer | None = None
    if dlq_kms_key_id:
        if kms_client is None:
            raise ConfigurationError("masking: a KMS DLQ key needs a KMS client")
        sealer = KmsSealer(kms_client(), dlq_kms_key_id)
    elif dlq_key:
        try:
            key = base64.b64decode(dlq_key, validate=True)
        except ValueError:
            raise ConfigurationError("masking: the DLQ key is not valid base64") from None
        sealer = AesGcmSealer(key, "static:" + hashlib.sha256(key).hexdigest()[:8])
    return masker, sealer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
