"""Blocks confirmed by a ledger digest: the ``chain-confirmed`` answer for the last block.

Under ``delivery = chain-confirmed`` a block is held until the next block's ``previousBlockHash``
confirms its ``blockHash`` (docs/delivery.md). The last block of a bounded stream has no successor;
a saved ``GetBlock`` output with its proof, folded to a ``GetDigest`` digest (V10,
:mod:`qldbstream.core.proof`), confirms it instead - the digest covers every block up to its tip.

``chain_anchors`` (``QLDBSTREAM_CHAIN_ANCHORS``) lists JSON files, as the QLDB API (or the AWS CLI)
wrote them:

* ``GetBlock`` outputs: ``{"Block": {"IonText": ...}, "Proof": {"IonText": ...}}``, optionally with
  ``"LedgerDigest": {"Digest": ..., "DigestTipAddress": {"IonText": ...}}`` (the digest the proof
  was requested for);
* a ``GetDigest`` output: ``{"Digest": ..., "DigestTipAddress": {"IonText": ...}}``, the digest for
  the ``GetBlock`` outputs that do not carry one (one such file at most).

Every anchor is checked when the app starts: a proof that does not fold to its digest, a block after
the digest's tip or on another strand, or a file that is neither, is a
:class:`~qldbstream.core.errors.ConfigurationError` - the app does not start on an anchor it cannot trust.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qldbstream.core.errors import ConfigurationError, InputError
from qldbstream.core.gate import BlockKey
from qldbstream.core.proof import parse_block_address, parse_digest, verify_proof
from qldbstream.io.qldb_api import ProofInput, read_api_document

__all__ = ["load_anchors"]


def _digest_of(doc: Mapping[str, Any], name: str) -> tuple[bytes, Any] | None:
    """A GetDigest output's digest and tip, if ``doc`` is one."""
    if "Digest" not in doc or "Block" in doc:
        return None
    tip = doc.get("DigestTipAddress")
    tip_text = tip.get("IonText") if isinstance(tip, Mapping) else tip
    if not isinstance(tip_text, str):
        raise InputError(f"{name}: a GetDigest output needs DigestTipAddress")
    return parse_digest(str(doc["Digest"])), parse_block_address(tip_text)


def load_anchors(paths: Iterable[str | Path]) -> dict[BlockKey, bytes]:
    """Read and check the anchor files; returns (strandId, sequenceNo) -> the block hash a digest
    confirms."""
    digests: list[tuple[bytes, Any, str]] = []
    proofs: list[ProofInput] = []
    for path in paths:
        name = str(path)
        try:
            doc = json.loads(Path(path).read_text())
            if not isinstance(doc, Mapping):
                raise InputError(f"{name}: not a JSON object")
            found = _digest_of(doc, name)
            if found is not None:
                digests.append((*found, name))
                continue
            if "Block" not in doc:
                raise InputError(f"{name}: neither a GetBlock output (Block, Proof) nor a GetDigest output")
            _, block_proofs = read_api_document(doc, name)
            if not block_proofs:
                raise InputError(f"{name}: a GetBlock output without a Proof confirms nothing")
            proofs += block_proofs
        except (OSError, ValueError, InputError) as exc:
            raise ConfigurationError(f"chain_anchors: {exc}") from None
    if len(digests) > 1:
        names = ", ".join(d[2] for d in digests)
        raise ConfigurationError(
            f"chain_anchors: {len(digests)} GetDigest outputs ({names}); give one, "
            "or put each digest in its GetBlock output's LedgerDigest"
        )
    anchors: dict[BlockKey, bytes] = {}
    for p in proofs:
        digest, tip = p.digest, p.tip
        if digest is None and digests:
            digest, tip = digests[0][0], digests[0][1]
        if digest is None:
            raise ConfigurationError(f"chain_anchors: {p.source}: no digest to check its proof against")
        if p.leaf_address is None:
            raise ConfigurationError(f"chain_anchors: {p.source}: the block has no blockAddress")
        result = verify_proof(p.leaf_hash, p.proof, digest, p.leaf_address, tip)
        if not result.passed:
            raise ConfigurationError(f"chain_anchors: {p.source}: V10 failed: {result.message}")
        key = (p.leaf_address.strand_id, p.leaf_address.sequence_no)
        if anchors.get(key, p.leaf_hash) != p.leaf_hash:
            raise ConfigurationError(f"chain_anchors: two different blocks are anchored at {key[0]}/{key[1]}")
        anchors[key] = p.leaf_hash
    return anchors
