"""Records and proofs out of saved QLDB API responses (GetRevision, GetBlock, GetDigest).

``GetRevision`` returns ``Revision.IonText`` (a revision struct) and ``Proof.IonText``;
``GetBlock`` returns ``Block.IonText`` (a journal block whose ``revisions`` hold full revision
structs, or ``{hash}`` for system revisions) and ``Proof.IonText``; a saved ledger digest adds
``LedgerDigest {Digest, DigestTipAddress.IonText}``. Some tools save only ``RevisionHash``.

Revisions and blocks are re-wrapped as the stream records QLDB would have written
(REVISION_DETAILS, BLOCK_SUMMARY with ``revisionSummaries``) so the same checks apply, and each
proof becomes a :class:`ProofInput` for V10.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qldbstream.core.decode import BlockAddress
from qldbstream.core.errors import InputError
from qldbstream.core.proof import parse_block_address, parse_digest, parse_proof
from qldbstream.core.records import KinesisRecord

__all__ = ["ProofInput", "read_api_document"]


@dataclass(frozen=True, slots=True)
class ProofInput:
    source: str
    leaf_hash: bytes
    leaf_address: BlockAddress | None
    proof: list[bytes]
    digest: bytes | None
    tip: BlockAddress | None
    what: str  # "revision" | "block"
    document_id: str | None = None


def _ion(text: Any, name: str, what: str) -> Any:
    from amazon.ion import simpleion

    if not isinstance(text, str):
        raise InputError(f"{name}: {what}.IonText is missing")
    try:
        return simpleion.loads(text)
    except Exception as exc:  # amazon-ion raises several unrelated exception types
        raise InputError(f"{name}: {what}.IonText is not valid Ion ({exc})") from None


def _ion_text_of(doc: Mapping[str, Any], key: str) -> Any:
    value = doc.get(key)
    return value.get("IonText") if isinstance(value, Mapping) else value


def _record(payload: Any, record_type: str, name: str) -> KinesisRecord:
    from amazon.ion import simpleion

    record = {"qldbStreamArn": "", "recordType": record_type, "payload": payload}
    return KinesisRecord(simpleion.dumps(record, binary=True), "", source=name)


def read_api_document(doc: Mapping[str, Any], name: str) -> tuple[list[KinesisRecord], list[ProofInput]]:
    records: list[KinesisRecord] = []
    proof_text = _ion_text_of(doc, "Proof")
    proof = parse_proof(proof_text) if isinstance(proof_text, str) else None
    digest: bytes | None = None
    tip: BlockAddress | None = None
    ledger_digest = doc.get("LedgerDigest")
    if isinstance(ledger_digest, Mapping):
        if isinstance(ledger_digest.get("Digest"), str):
            digest = parse_digest(ledger_digest["Digest"])
        tip_text = _ion_text_of(ledger_digest, "DigestTipAddress")
        if isinstance(tip_text, str):
            tip = parse_block_address(tip_text)
    proofs: list[ProofInput] = []
    table = doc.get("TableName") if isinstance(doc.get("TableName"), str) else ""

    if "Revision" in doc:
        rev = _ion(_ion_text_of(doc, "Revision"), name, "Revision")
        records.append(
            _record(
                {"tableInfo": {"tableName": table, "tableId": ""}, "revision": rev},
                "REVISION_DETAILS",
                f"{name} Revision",
            )
        )
        if proof is not None:
            proofs.append(_proof_for(rev, name, proof, digest, tip, "revision"))
    elif "Block" in doc:
        block = _ion(_ion_text_of(doc, "Block"), name, "Block")
        payload = dict(block)
        revisions = payload.pop("revisions", None) or []
        payload["revisionSummaries"] = [
            {"hash": r["hash"], **({"documentId": r["metadata"]["id"]} if "metadata" in r else {})}
            for r in revisions
        ]
        records.append(_record(payload, "BLOCK_SUMMARY", f"{name} Block"))
        for i, r in enumerate(revisions):
            if "metadata" in r:
                records.append(
                    _record(
                        {"tableInfo": {"tableName": "", "tableId": ""}, "revision": r},
                        "REVISION_DETAILS",
                        f"{name} Block.revisions[{i}]",
                    )
                )
        if proof is not None:
            address = _address(block.get("blockAddress"))
            proofs.append(ProofInput(name, bytes(block["blockHash"]), address, proof, digest, tip, "block"))
    elif "RevisionHash" in doc:
        try:
            leaf = base64.b64decode(str(doc["RevisionHash"]), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{name}: RevisionHash is not base64") from None
        address_text = _ion_text_of(doc, "BlockAddress")
        address = parse_block_address(address_text) if isinstance(address_text, str) else None
        if proof is None:
            raise InputError(f"{name}: RevisionHash without a Proof: nothing to verify")
        document_id = doc.get("DocumentId") if isinstance(doc.get("DocumentId"), str) else None
        proofs.append(ProofInput(name, leaf, address, proof, digest, tip, "revision", document_id))
    return records, proofs


def _address(value: Any) -> BlockAddress | None:
    try:
        return BlockAddress(str(value["strandId"]), int(value["sequenceNo"]))
    except (KeyError, TypeError, ValueError):
        return None


def _proof_for(
    rev: Any, name: str, proof: list[bytes], digest: bytes | None, tip: BlockAddress | None, what: str
) -> ProofInput:
    document_id = None
    with contextlib.suppress(KeyError, TypeError):
        document_id = str(rev["metadata"]["id"])
    return ProofInput(
        name, bytes(rev["hash"]), _address(rev.get("blockAddress")), proof, digest, tip, what, document_id
    )
