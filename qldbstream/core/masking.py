"""Masking sensitive fields of revision data: rules and Ion-typed masking.

**Rules** match field names by regular expression (the whole name, case-insensitive) at any
depth of a document and say how to mask the value (the seed's ``masking_config``)::

    ssn|social_security       HASH       keyed hash (HMAC-SHA-256): stable, joinable, not reversible
    credit_card|card_number   PARTIAL 4  keep the last 4 characters: ``************1234``
    dateOfBirth               REDACT     a typed null of the same Ion type

**Ion types are kept**: a masked string is a string, a symbol a symbol, annotations stay, struct
fields (duplicates too) and list order stay. HASH gives hex text for strings and symbols, a
digest for blobs and clobs, a 63-bit integer for ints, and hex *text* for the types a digest
cannot be (decimal, float, timestamp, bool). PARTIAL works on text (numbers are masked as their
text). A rule on a struct or list masks every scalar inside it. Nulls stay nulls.

**Where masking applies** (see ``docs/handlers/masking.md``): handlers get a masked copy of each
revision (:func:`masked_copy`: ``.data`` and ``.ion`` are masked; ``.raw`` stays the original
bytes, which verification already checked); logs go through
:class:`qldbstream.io.masking_logs.MaskingLogFilter`; free text and PartiQL statements are masked
by :mod:`qldbstream.core.masking_text`; a dead-letter envelope is sealed
(:func:`qldbstream.core.masking_dlq.seal_envelope`): the raw bytes are encrypted by a
:class:`~qldbstream.core.masking_dlq.Sealer` so that replay can still verify the original, and
humans get the masked document and scrubbed messages.

Everything here is pure. The sealers themselves (AES-GCM under a key, KMS envelope encryption:
keys, randomness, a KMS client) and the wiring from settings
(:func:`qldbstream.io.sealers.masking_from_settings`) are in :mod:`qldbstream.io.sealers`.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from qldbstream.core.errors import ConfigurationError

__all__ = [
    "DEFAULT_RULES",
    "Masker",
    "MaskingRule",
    "MaskingType",
    "masked_copy",
    "parse_rules",
]


class MaskingType(StrEnum):
    HASH = "HASH"
    PARTIAL = "PARTIAL"
    REDACT = "REDACT"


@dataclass(frozen=True)
class MaskingRule:
    """``field_pattern`` (a regex matched against whole field names, any case) → ``masking_type``."""

    field_pattern: str
    masking_type: MaskingType
    visible_chars: int = 4
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "regex", re.compile(self.field_pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConfigurationError(f"masking: bad field pattern {self.field_pattern!r} ({exc})") from None
        if self.visible_chars < 0:
            raise ConfigurationError("masking: visible_chars must not be negative")

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


#: The seed design's ``masking_config``.
DEFAULT_RULES = (
    MaskingRule("ssn|social_security", MaskingType.HASH),
    MaskingRule("credit_card|card_number", MaskingType.PARTIAL, 4),
)


def parse_rules(text: str) -> tuple[MaskingRule, ...]:
    """Rules from the seed's JSON (``[{"field_pattern": …, "masking_type": …, "visible_chars": 4}]``)
    or the compact form ``ssn|social_security=HASH; credit_card|card_number=PARTIAL:4``."""
    text = text.strip()
    try:
        if text.startswith(("[", "{")):
            data = json.loads(text)
            items = data.get("rules", []) if isinstance(data, dict) else data
            return tuple(
                MaskingRule(
                    str(i["field_pattern"]),
                    MaskingType(str(i["masking_type"]).upper()),
                    int(i.get("visible_chars", 4)),
                )
                for i in items
            )
        rules = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            pattern, sep, how = part.rpartition("=")
            kind, _, visible = how.strip().partition(":")
            if not sep or not pattern.strip():
                raise ValueError(f"{part!r} is not pattern=TYPE")
            rules.append(MaskingRule(pattern.strip(), MaskingType(kind.upper()), int(visible or 4)))
        return tuple(rules)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"masking: cannot read the rules {text!r} ({exc})") from None


# --- masking Ion values ----------------------------------------------------------------------------


def _ion_type(value: Any) -> Any:
    from amazon.ion.core import IonType

    declared = getattr(value, "ion_type", None)
    if declared is not None:
        return declared
    if value is None:
        return IonType.NULL
    for kind, ion_type in (
        (bool, IonType.BOOL),
        (int, IonType.INT),
        (float, IonType.FLOAT),
        (Decimal, IonType.DECIMAL),
        (datetime, IonType.TIMESTAMP),
        (str, IonType.STRING),
        (bytes | bytearray, IonType.BLOB),
        (Mapping, IonType.STRUCT),
        (list | tuple, IonType.LIST),
    ):
        if isinstance(value, kind):
            return ion_type
    raise TypeError(f"not an Ion value: {type(value).__name__}")


def _is_null(value: Any) -> bool:
    return value is None or type(value).__name__ == "IonPyNull"


def _text(value: Any) -> str:
    text = getattr(value, "text", None)  # a symbol
    return text if isinstance(text, str) else str(value)


def _rebuild(original: Any, ion_type: Any, new: Any) -> Any:
    """``new`` as the same kind of value as ``original``: IonPy with its annotations, or plain Python."""
    if not hasattr(original, "ion_type"):
        return new
    from amazon.ion import simple_types as st
    from amazon.ion.core import IonType
    from amazon.ion.symbols import SymbolToken

    annotations = getattr(original, "ion_annotations", ())
    if new is None:
        return st.IonPyNull.from_value(ion_type, None, annotations)
    classes = {
        IonType.STRING: st.IonPyText,
        IonType.SYMBOL: st.IonPySymbol,
        IonType.INT: st.IonPyInt,
        IonType.BLOB: st.IonPyBytes,
        IonType.CLOB: st.IonPyBytes,
        IonType.LIST: st.IonPyList,
        IonType.SEXP: st.IonPyList,
    }
    if ion_type == IonType.SYMBOL:
        new = SymbolToken(new, None)
    return classes[ion_type].from_value(ion_type, new, annotations)


class Masker:
    """Applies rules to Ion values. ``key`` (at least 16 bytes) is required by HASH rules."""

    def __init__(self, rules: Iterable[MaskingRule] = DEFAULT_RULES, key: bytes | str | None = None) -> None:
        self.rules = tuple(rules)
        self._key = key.encode("utf-8") if isinstance(key, str) else key
        if any(r.masking_type is MaskingType.HASH for r in self.rules) and (
            self._key is None or len(self._key) < 16
        ):
            raise ConfigurationError("masking: HASH rules need a secret key of at least 16 bytes (hash_key)")

    def __repr__(self) -> str:  # never show the key
        return f"Masker({[(r.field_pattern, r.masking_type.value) for r in self.rules]})"

    def rule_for(self, name: str) -> MaskingRule | None:
        return next((r for r in self.rules if r.matches(name)), None)

    def mask(self, value: Any) -> Any:
        """A masked copy of ``value`` (struct fields matched by a rule are masked, at any depth)."""
        return self._walk(value, None, None)

    def secrets(self, value: Any) -> list[str]:
        """The texts ``mask`` hides in ``value`` (longest first), to scrub them from messages."""
        found: set[str] = set()
        self._walk(value, None, found)
        return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)

    def mask_record(self, ion: Any) -> Any:
        """A QLDB stream record's Ion value with ``payload.revision.data`` masked, and a block
        summary's statement texts (``payload.transactionInfo.statements[].statement``, where
        literals carry values: :meth:`mask_statement`); other fields unchanged - the journal
        metadata carries no document fields."""
        try:
            payload = ion["payload"]
        except (KeyError, TypeError):
            return ion
        if not hasattr(payload, "get"):
            return ion
        revision = payload.get("revision")
        if hasattr(revision, "get") and revision.get("data") is not None:
            masked_revision = _with_field(revision, "data", self.mask(revision["data"]))
            return _with_field(ion, "payload", _with_field(payload, "revision", masked_revision))
        info = payload.get("transactionInfo")
        statements = info.get("statements") if hasattr(info, "get") else None
        if not isinstance(statements, list) or not statements:
            return ion
        masked_statements = [
            _with_field(s, "statement", _rebuild(s["statement"], _ion_type(s["statement"]), masked))
            if hasattr(s, "get")
            and isinstance(s.get("statement"), str)
            and (masked := self.mask_statement(str(s["statement"]))) != s["statement"]
            else s
            for s in statements
        ]
        masked_info = _with_field(
            info, "statements", _rebuild(statements, _ion_type(statements), masked_statements)
        )
        return _with_field(ion, "payload", _with_field(payload, "transactionInfo", masked_info))

    def mask_statement(self, text: str) -> str:
        """A PartiQL statement text with the literals of masked fields masked
        (:func:`qldbstream.core.masking_text.mask_statement`)."""
        from qldbstream.core.masking_text import mask_statement

        return mask_statement(self, text)

    def mask_text(self, text: str) -> str:
        """Free text (a message, a traceback) with the values written next to masked field names
        masked (:func:`qldbstream.core.masking_text.mask_text`)."""
        from qldbstream.core.masking_text import mask_text

        return mask_text(self, text)

    def masked_text(self, value: Any) -> str:
        """Compact Ion text of the masked value: what logs and the DLQ may show."""
        from amazon.ion import simpleion

        text: str = simpleion.dumps(self.mask(value), binary=False)
        return text.removeprefix("$ion_1_0 ")

    def _walk(self, value: Any, rule: MaskingRule | None, found: set[str] | None) -> Any:
        from amazon.ion import simple_types as st
        from amazon.ion.core import IonType

        ion_type = _ion_type(value)
        if ion_type == IonType.STRUCT and not _is_null(value):
            pairs = value.iteritems() if hasattr(value, "iteritems") else value.items()
            masked = [(k, self._walk(v, rule or self.rule_for(str(k)), found)) for k, v in pairs]
            if not hasattr(value, "ion_type"):
                return dict(masked)
            if rule is not None and rule.masking_type is MaskingType.REDACT:
                return _rebuild(value, ion_type, None)
            out = st.IonPyDict.from_value(IonType.STRUCT, {}, getattr(value, "ion_annotations", ()))
            for k, v in masked:
                out.add_item(k, v)
            return out
        if ion_type in (IonType.LIST, IonType.SEXP) and not _is_null(value):
            if rule is not None and rule.masking_type is MaskingType.REDACT:
                return _rebuild(value, ion_type, None)
            items = [self._walk(v, rule, found) for v in value]
            return _rebuild(value, ion_type, items) if hasattr(value, "ion_type") else type(value)(items)
        if rule is None or _is_null(value):
            return value
        if found is not None and not isinstance(value, bytes | bytearray):
            found.add(_text(value))
        return self._scalar(value, ion_type, rule)

    def _scalar(self, value: Any, ion_type: Any, rule: MaskingRule) -> Any:
        from amazon.ion.core import IonType

        texty = ion_type in (IonType.STRING, IonType.SYMBOL)
        if rule.masking_type is MaskingType.REDACT:
            return _rebuild(value, ion_type, None) if hasattr(value, "ion_type") else None
        if rule.masking_type is MaskingType.PARTIAL:
            text = _text(value)
            keep = rule.visible_chars if len(text) > rule.visible_chars else 0
            masked = "*" * (len(text) - keep) + text[len(text) - keep :]
            return _rebuild(value, ion_type if texty else IonType.STRING, masked)
        assert self._key is not None
        if texty:
            message = _text(value).encode("utf-8")
        elif ion_type in (IonType.BLOB, IonType.CLOB):
            message = b"blob:" + bytes(value)
        else:
            message = f"{ion_type.name}:{value!s}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        if ion_type in (IonType.BLOB, IonType.CLOB):
            return _rebuild(value, ion_type, digest)
        if ion_type == IonType.INT and not isinstance(value, bool):
            return _rebuild(value, ion_type, int.from_bytes(digest[:8], "big") >> 1)
        return _rebuild(value, ion_type if texty else IonType.STRING, digest.hex())

    def scrub(self, text: str, secrets: Iterable[str]) -> str:
        """``text`` with every occurrence of each secret replaced by ``****``."""
        for secret in secrets:
            text = text.replace(secret, "****")
        return text


def masked_copy(record: Any, masker: Masker) -> Any:
    """A copy of a journal record that gives masked values: a revision's ``ion`` and ``data``, a
    block summary's statement texts (:meth:`Masker.mask_statement`).

    ``raw`` (the verified original bytes) and every identity field are unchanged; the copy's
    ``masker`` is set, so that a handler that writes records out (replication) knows to write the
    masked form. CONTROL records, and records masked by ``masker`` already, are returned as they are.
    """
    from qldbstream.core.decode import BlockSummary, RevisionDetails

    if not isinstance(record, RevisionDetails | BlockSummary) or record.masker is masker:
        return record
    view = copy.copy(record)
    view.mask_with(masker)
    return view


def _with_field(struct: Any, name: str, value: Any) -> Any:
    """A new struct like ``struct`` (type, annotations, field order) with field ``name`` replaced."""
    if not hasattr(struct, "iteritems"):
        return {**struct, name: value}
    from amazon.ion import simple_types as st

    out = st.IonPyDict.from_value(struct.ion_type, {}, getattr(struct, "ion_annotations", ()))
    for key, item in struct.iteritems():
        out.add_item(key, value if key == name else item)
    return out
