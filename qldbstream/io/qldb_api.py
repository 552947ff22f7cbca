"""Records and proofs out of saved QLDB API output (GetRevision, GetBlock, GetDigest) and receipts.

The QLDB API reference (GetRevision, GetBlock, GetDigest; qldb-stream-format.md §9):

* ``GetRevision`` returns ``Revision.IonText`` (a revision struct) and ``Proof.IonText``;
* ``GetBlock`` returns ``Block.IonText`` (a journal block) and ``Proof.IonText``;
* ``GetDigest`` returns ``Digest`` (base64, 32 bytes) and ``DigestTipAddress.IonText``.

Applications store the same material their own way - a **receipt**: a revision hash (or the
revision itself) + proof + digest + tip address. A receipt is found by its fields, whatever their
case (``RevisionHash``, ``revision_hash``, ``proof`` as Ion text, ``{IonText}`` or a list of base64
hashes, ``LedgerDigest {Digest, DigestTipAddress}`` or ``digest`` + ``digestTipAddress``).

Revisions and blocks become the stream records QLDB would have written
(:mod:`qldbstream.io.journal_values`) so the same checks apply, and each proof a
:class:`ProofInput` for V10.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qldbstream.core.decode import BlockAddress
from qldbstream.core.errors import InputError
from qldbstream.core.proof import parse_block_address, parse_digest, parse_proof
from qldbstream.core.records import KinesisRecord
from qldbstream.core.report import Subject
from qldbstream.io.journal_values import block_records, ion_from_json, is_block, is_revision, revision_record

__all__ = [
    "ApiContent",
    "DigestInput",
    "ProofInput",
    "digest_argument",
    "is_api_document",
    "is_digest",
    "read_api_document",
    "read_digest",
    "read_receipt",
]


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


@dataclass(frozen=True, slots=True)
class DigestInput:
    """A ledger digest and the block it covers up to (a saved GetDigest output or ``--digest``)."""

    source: str
    digest: bytes
    tip: BlockAddress | None


@dataclass
class ApiContent:
    records: list[KinesisRecord] = field(default_factory=list)
    proofs: list[ProofInput] = field(default_factory=list)
    digest: DigestInput | None = None
    subject: Subject | None = None


def _keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Field names without case, ``_`` or ``-``: ``RevisionHash`` = ``revision_hash`` = ``revisionHash``."""
    return {str(k).lower().replace("_", "").replace("-", ""): v for k, v in doc.items()}


_RECEIPT_KEYS = frozenset({"revision", "block", "proof", "revisionhash", "ledgerdigest"})


def is_digest(doc: Any) -> bool:
    """A GetDigest output: ``Digest`` and ``DigestTipAddress``, nothing to prove."""
    if not isinstance(doc, Mapping):
        return False
    k = _keys(doc)
    return "digest" in k and "digesttipaddress" in k and not (_RECEIPT_KEYS & k.keys())


def is_api_document(doc: Any) -> bool:
    """A GetRevision / GetBlock output or a receipt (see the module doc)."""
    if not isinstance(doc, Mapping) or is_block(doc) or is_revision(doc):
        return False
    return bool(_RECEIPT_KEYS & _keys(doc).keys())


def _ion_text_of(value: Any) -> Any:
    if isinstance(value, Mapping):
        k = _keys(value)
        if "iontext" in k:
            return k["iontext"]
    return value


def _ion(text: Any, name: str, what: str) -> Any:
    from amazon.ion import simpleion

    try:
        return simpleion.loads(text)
    except Exception as exc:  # amazon-ion raises several unrelated exception types
        raise InputError(f"{name}: {what} is not valid Ion text ({exc})") from None


def _address(value: Any, name: str, what: str) -> BlockAddress | None:
    value = _ion_text_of(value)
    if value is None:
        return None
    if isinstance(value, str):
        return parse_block_address(value)
    try:
        return BlockAddress(str(value["strandId"]), int(value["sequenceNo"]))
    except (KeyError, TypeError, ValueError):
        raise InputError(f'{name}: {what} must look like {{strandId: "...", sequenceNo: 12}}') from None


def _proof(value: Any, name: str) -> list[bytes] | None:
    value = _ion_text_of(value)
    if value is None:
        return None
    if isinstance(value, str):
        return parse_proof(value)
    if isinstance(value, list) and all(isinstance(h, str) for h in value):
        return parse_proof("[" + ", ".join("{{" + h + "}}" for h in value) + "]")
    raise InputError(
        f"{name}: a proof must be Ion text ([{{{{...}}}}, ...]), {{IonText}} or a list of base64 hashes"
    )


def _hash(value: Any, name: str, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name}: {what} is not base64") from None


def read_digest(doc: Mapping[str, Any], name: str) -> DigestInput:
    """A GetDigest output (or a ``LedgerDigest`` / ``digest`` + ``digestTipAddress`` pair)."""
    k = _keys(doc)
    digest = k.get("digest")
    if not isinstance(digest, str | bytes):
        raise InputError(f"{name}: a GetDigest output needs Digest (base64)")
    raw = digest if isinstance(digest, bytes) else parse_digest(digest)
    return DigestInput(name, raw, _address(k.get("digesttipaddress"), name, "DigestTipAddress"))


def _structured(value: Any, name: str, what: str) -> tuple[Any, bool]:
    """A revision or block given as Ion text, ``{IonText}`` or JSON: (Ion value, came from JSON)."""
    inner = _ion_text_of(value)
    if isinstance(inner, str):
        return _ion(inner, name, f"{what}.IonText"), False
    if isinstance(inner, Mapping):
        return ion_from_json(inner), True
    raise InputError(f"{name}: {what} must be Ion text, {{IonText}} or an object")


def read_receipt(doc: Mapping[str, Any], name: str, used: str | None = None) -> ApiContent:
    """Everything a GetRevision / GetBlock output or an application's receipt holds."""
    k = _keys(doc)
    source = name if used is None else f"{name} {used}"
    out = ApiContent()
    proof = _proof(k.get("proof"), source)
    if "ledgerdigest" in k and isinstance(k["ledgerdigest"], Mapping):
        out.digest = read_digest(k["ledgerdigest"], source)
    elif "digest" in k:
        out.digest = read_digest(k, source)
    digest, tip = (out.digest.digest, out.digest.tip) if out.digest else (None, None)
    table = k.get("tablename") if isinstance(k.get("tablename"), str) else ""
    api = {str(key) for key in doc} <= {
        "Revision",
        "Block",
        "Proof",
        "LedgerDigest",
        "TableName",
        "ResponseMetadata",
    }
    if "revision" in k or ("document" in k and is_revision(k["document"])):
        rev, from_json = _structured(k.get("revision", k.get("document")), source, "Revision")
        if not is_revision(rev):
            raise InputError(f"{source}: Revision is not a revision struct (hash, data, metadata)")
        out.subject = Subject(source, "GetRevision output" if api else "receipt", used, revisions=1)
        out.subject.unaddressed = int("blockAddress" not in rev)
        out.subject.from_json = from_json
        out.records.append(revision_record(rev, f"{source} Revision", str(table)))
        if proof is not None:
            document_id: str | None = str(rev["metadata"]["id"])
            address = _address(rev.get("blockAddress"), source, "blockAddress") or _address(
                k.get("blockaddress"), source, "BlockAddress"
            )
            out.proofs.append(
                ProofInput(source, bytes(rev["hash"]), address, proof, digest, tip, "revision", document_id)
            )
    elif "block" in k:
        block, from_json = _structured(k["block"], source, "Block")
        if not is_block(block):
            raise InputError(
                f"{source}: Block is not a journal block (blockAddress, blockHash, entriesHashList)"
            )
        users = sum(1 for r in block.get("revisions") or [] if is_revision(r))
        shape = "GetBlock output" if api else "receipt"
        out.subject = Subject(source, shape, used, revisions=users, block=True)
        out.subject.from_json = from_json
        out.records.extend(block_records(block, source))
        if proof is not None:
            address = _address(block["blockAddress"], source, "blockAddress")
            out.proofs.append(
                ProofInput(source, bytes(block["blockHash"]), address, proof, digest, tip, "block")
            )
    elif "revisionhash" in k or "hash" in k:
        leaf = _hash(k.get("revisionhash", k.get("hash")), source, "the revision hash")
        if proof is None:
            raise InputError(f"{source}: a revision hash without a proof: nothing to verify")
        out.subject = Subject(source, "receipt", used, hash_only=True)
        document_id = k["documentid"] if isinstance(k.get("documentid"), str) else None
        address = _address(k.get("blockaddress"), source, "BlockAddress")
        out.proofs.append(ProofInput(source, leaf, address, proof, digest, tip, "revision", document_id))
    else:
        raise InputError(
            f"{source}: a proof without the revision, block or hash it proves (expected Revision, "
            "Block or RevisionHash next to Proof)"
        )
    if out.subject is not None:
        out.subject.has_proof = proof is not None
    return out


def read_api_document(doc: Mapping[str, Any], name: str) -> tuple[list[KinesisRecord], list[ProofInput]]:
    """The records and proofs of a GetRevision / GetBlock output or a receipt."""
    got = read_receipt(doc, name)
    return got.records, got.proofs


def digest_argument(text: str) -> DigestInput:
    """``--digest``: the digest as base64 or an Ion blob, or a file holding a saved GetDigest output."""
    path = Path(text)
    if not text.strip().startswith("{{") and path.is_file():
        import json

        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, Mapping) or not ({"digest", "ledgerdigest"} & _keys(doc).keys()):
            raise InputError(
                f"--digest {text}: expected a saved GetDigest output (JSON with Digest, DigestTipAddress)"
            )
        k = _keys(doc)
        return read_digest(k["ledgerdigest"] if isinstance(k.get("ledgerdigest"), Mapping) else doc, text)
    return DigestInput("--digest", parse_digest(text), None)
