"""V10: anchor a revision or block hash to a ledger digest with a GetRevision / GetBlock proof.

``fold_left(dot, Proof, leaf) == Digest`` (qldb-stream-format.md §5 V10). The digest covers
the journal up to and including the block at ``DigestTipAddress``; the leaf must therefore lie
on the same strand at or before that block. Proofs and addresses come as Ion text, as the
QLDB API returns them (``Proof.IonText``, ``DigestTipAddress.IonText``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from qldbstream.core.decode import BlockAddress
from qldbstream.core.errors import InputError
from qldbstream.core.qldb_hash import HASH_LENGTH, fold_proof

__all__ = ["ProofResult", "parse_block_address", "parse_digest", "parse_proof", "verify_proof"]


@dataclass(frozen=True, slots=True)
class ProofResult:
    passed: bool
    computed: bytes
    digest: bytes
    message: str


def _ion_text(text: str, what: str) -> Any:
    from amazon.ion import simpleion

    try:
        return simpleion.loads(text)
    except Exception as exc:  # amazon-ion raises several unrelated types for bad text
        raise InputError(f"{what} is not valid Ion text: {exc}") from None


def parse_proof(text: str) -> list[bytes]:
    """Parse ``Proof.IonText``: an Ion list of 32-byte blobs."""
    value = _ion_text(text, "the proof")
    if not isinstance(value, list) or not all(isinstance(h, bytes) for h in value):
        raise InputError("the proof must be an Ion list of blobs, e.g. [{{...}}, {{...}}]")
    for i, h in enumerate(value):
        if len(h) != HASH_LENGTH:
            raise InputError(f"proof entry {i} is {len(h)} bytes long; a QLDB hash is {HASH_LENGTH}")
    return [bytes(h) for h in value]


def parse_block_address(text: str) -> BlockAddress:
    """Parse ``{strandId: "...", sequenceNo: N}`` (a block or digest tip address)."""
    value = _ion_text(text, "the block address")
    try:
        return BlockAddress(str(value["strandId"]), int(value["sequenceNo"]))
    except (KeyError, TypeError, ValueError):
        raise InputError('a block address must look like {strandId: "...", sequenceNo: 12}') from None


def parse_digest(text: str) -> bytes:
    """A digest as base64 (as GetDigest returns it) or as an Ion blob ``{{...}}``."""
    text = text.strip()
    if text.startswith("{{"):
        value = _ion_text(text, "the digest")
        raw = bytes(value)
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise InputError("the digest must be base64 or an Ion blob {{...}}") from None
    if len(raw) != HASH_LENGTH:
        raise InputError(f"the digest is {len(raw)} bytes long; a QLDB digest is {HASH_LENGTH}")
    return raw


def verify_proof(
    leaf: bytes,
    proof: list[bytes],
    digest: bytes,
    leaf_address: BlockAddress | None = None,
    tip: BlockAddress | None = None,
) -> ProofResult:
    """Fold ``proof`` onto ``leaf`` and compare with ``digest`` (and check the tip address)."""
    computed = fold_proof(leaf, proof)
    if leaf_address is not None and tip is not None:
        if leaf_address.strand_id != tip.strand_id:
            return ProofResult(False, computed, digest, "the leaf is on another strand than the digest tip")
        if leaf_address.sequence_no > tip.sequence_no:
            return ProofResult(
                False,
                computed,
                digest,
                f"block {leaf_address.sequence_no} is after the digest tip {tip.sequence_no}: "
                "the digest cannot cover it",
            )
    if computed != digest:
        return ProofResult(False, computed, digest, "the proof does not fold to the digest")
    return ProofResult(True, computed, digest, "")
