"""Masking for the dead-letter queue: a dead-letter envelope is sealed (:func:`seal_envelope`) -
the raw bytes are encrypted by a :class:`Sealer` so that replay can still verify the original
(:func:`open_envelope`), and humans get the masked document and scrubbed messages (the masking
itself: :class:`qldbstream.core.masking.Masker`).

Everything here is pure. The sealers themselves (AES-GCM under a key, KMS envelope encryption) are
in :mod:`qldbstream.io.sealers`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Protocol

from qldbstream.core.masking import Masker

__all__ = ["Sealer", "open_envelope", "seal_envelope"]


class Sealer(Protocol):
    """Encrypts the raw bytes of a dead-lettered record so that only replay can read them."""

    def seal(self, data: bytes, context: str) -> dict[str, str]: ...
    def open(self, sealed: Mapping[str, str], context: str) -> bytes: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_RAW_FIELDS = ("user_record_data", "kinesis_data")


def _context(envelope: Mapping[str, Any], name: str) -> str:
    parts = ("stream_arn", "shard_id", "sequence_number", "sub_sequence_number")
    return "|".join(str(envelope.get(p)) for p in parts) + "|" + name


def seal_envelope(
    envelope: Mapping[str, Any], masker: Masker, sealer: Sealer, data: Any = None
) -> dict[str, Any]:
    """A dead-letter envelope (its JSON fields) safe for humans: the raw bytes sealed into
    ``sealed``, the masked document as Ion text in ``masked_data`` (when ``data`` is given), and
    the error message and traceback scrubbed of the document's sensitive values."""
    out = dict(envelope)
    sealed: dict[str, dict[str, str]] = {}
    for name in _RAW_FIELDS:
        raw = out.get(name)
        if raw is not None:
            # Only the sealer may raise (a KMS outage: the letter cannot be stored yet, the
            # checkpoint must hold); nothing below does, whatever the document holds.
            sealed[name] = sealer.seal(base64.b64decode(raw), _context(envelope, name))
            out[name] = None
    try:
        from qldbstream.core.decode import UNREADABLE

        if data is UNREADABLE:
            raise ValueError("amazon-ion cannot load the document")
        secrets = masker.secrets(data) if data is not None else []
        masked_data = masker.masked_text(data) if data is not None else None
        for name in ("error_message", "traceback"):
            if isinstance(out.get(name), str):
                out[name] = masker.mask_text(masker.scrub(out[name], secrets))
    except Exception as exc:  # the document cannot be masked: withhold what might quote it
        masked_data = None
        reason = f"withheld: the document could not be masked ({type(exc).__name__})"
        out["error_message"] = f"{out.get('error_type') or 'error'} [{reason}]"
        out["traceback"] = None
    out["sealed"] = sealed
    out["masked_data"] = masked_data
    out["masked"] = True
    return out


def open_envelope(envelope: Mapping[str, Any], sealer: Sealer) -> dict[str, Any]:
    """The envelope with its raw bytes back (base64) and ``sealed`` emptied, for replay:
    verification runs on them."""
    out = dict(envelope)
    for name, sealed in (envelope.get("sealed") or {}).items():
        out[name] = _b64(sealer.open(sealed, _context(envelope, name)))
    out["sealed"] = {}
    return out
