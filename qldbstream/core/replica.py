"""What a replica of a stream holds when masking is on: masked records, or the original bytes sealed.

Masking on, a copy of the stream (the ``replication`` handler's targets) must not hold personal
data in clear. Two forms, both read back by ``qldbstream dr-check``:

**Masked** (the default with masking on): each revision is written in QLDB's own *redacted*
form - ``data`` replaced by ``dataHash`` (the Ion hash of the original data, which the scan
computed) - plus ``maskedData``, the document with its sensitive fields masked. The revision hash
is unchanged and still verifies (V2: ``dot(H(metadata), dataHash)``), so the copy stays
verifiable, record by record and against the block summaries (V3), without holding the values.
A block summary whose statement texts carry literals of masked fields is written with those
literals masked (its V5 / V6 can then no longer be checked on the copy); other block summaries
and CONTROL records are written as received.

**Sealed** (an explicit choice, for a copy that must be verifiable byte for byte, e.g. disaster
recovery): the original bytes encrypted - AES-256-GCM under a KMS data key (envelope encryption,
:class:`~qldbstream.io.sealers.KmsSealer`), the record's identity as associated data - in a small
JSON document::

    {"qldbstreamSealedRecord": 1, "key": "rev#<documentId>#<version>", "sealed": {alg, kid, nonce, ct, edk}}

Reading the bytes back needs ``kms:Decrypt`` on the key: an IAM permission, audited in
CloudTrail. :func:`open_sealed_record` gives them back exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qldbstream.core.decode import BlockSummary, JournalRecord, RevisionDetails
from qldbstream.core.masking_dlq import Sealer

__all__ = [
    "SEALED_MARKER",
    "is_masked_record",
    "is_sealed_record",
    "masked_record_bytes",
    "open_sealed_record",
    "seal_record",
]

SEALED_MARKER = b'{"qldbstreamSealedRecord":'
_MASKED_FIELD = "maskedData"


def _context(key: str) -> str:
    return "qldbstream-replica|" + key


def seal_record(sealer: Sealer, key: str, data: bytes) -> bytes:
    """The sealed form of one user record's bytes (``key``: its de-duplication key)."""
    document = {"qldbstreamSealedRecord": 1, "key": key, "sealed": sealer.seal(data, _context(key))}
    return json.dumps(document, separators=(",", ":")).encode()


def is_sealed_record(data: bytes) -> bool:
    return data.startswith(SEALED_MARKER)


def open_sealed_record(data: bytes, sealer: Sealer) -> tuple[str, bytes]:
    """``(key, original bytes)`` of a sealed record; raises ``ValueError`` when it is not one, or
    when it cannot be opened (another key, a changed ciphertext or identity)."""
    try:
        document = json.loads(data)
        key, sealed = str(document["key"]), document["sealed"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a sealed record ({exc})") from None
    try:
        return key, sealer.open(sealed, _context(key))
    except Exception as exc:  # InvalidTag, a KMS error: say which record
        raise ValueError(f"sealed record {key} cannot be opened: {type(exc).__name__}: {exc}") from exc


def masked_record_bytes(record: JournalRecord) -> bytes:
    """The masked form of a record the pipeline masked (``record.masker`` set): see the module."""
    masker = record.masker
    if masker is None:
        return record.raw
    if isinstance(record, RevisionDetails):
        if record.data is None or record.content_hash is None:  # deleted or redacted: no data
            return record.raw
        return _dump(_redacted_form(record.ion, record.content_hash))
    if isinstance(record, BlockSummary):
        texts = [t for t, _, _ in record.statement_entries]
        if all(masker.mask_statement(t) == t for t in texts):
            return record.raw
        return _dump(record.ion)  # the statement literals of masked fields are masked in ``ion``
    return record.raw


def is_masked_record(record: JournalRecord) -> bool:
    """A revision in the masked form (redacted, with ``maskedData``)."""
    if not isinstance(record, RevisionDetails) or not record.is_redacted:
        return False
    return _MASKED_FIELD.encode() in record.raw and _MASKED_FIELD in record.ion["payload"]["revision"]


def _redacted_form(ion: Any, data_hash: bytes) -> Any:
    from amazon.ion import simple_types as st
    from amazon.ion.core import IonType

    def copy_struct(struct: Any, edit: Callable[[Any, Any], None]) -> Any:
        out = st.IonPyDict.from_value(IonType.STRUCT, {}, getattr(struct, "ion_annotations", ()))
        edit(struct, out)
        return out

    def revision_fields(revision: Any, out: Any) -> None:
        masked = None
        for name, value in revision.iteritems():
            if name == "data":
                masked = value
                out.add_item("dataHash", st.IonPyBytes.from_value(IonType.BLOB, data_hash))
            else:
                out.add_item(name, value)
        out.add_item(_MASKED_FIELD, masked)

    def payload_fields(payload: Any, out: Any) -> None:
        for name, value in payload.iteritems():
            out.add_item(name, copy_struct(value, revision_fields) if name == "revision" else value)

    def top_fields(top: Any, out: Any) -> None:
        for name, value in top.iteritems():
            out.add_item(name, copy_struct(value, payload_fields) if name == "payload" else value)

    return copy_struct(ion, top_fields)


def _dump(value: Any) -> bytes:
    from amazon.ion import simpleion

    data: bytes = simpleion.dumps(value, binary=True)
    return data
