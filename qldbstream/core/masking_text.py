"""Masking values in text: log messages, exception messages and tracebacks, PartiQL statements.

Documents are masked by field name (:class:`~qldbstream.core.masking.Masker`); text has no structure,
so a value is recognised by the field name written next to it:

* ``name: value`` / ``name = value`` / ``name <op> value`` / ``name IN (v1, v2)`` - a Python
  ``repr``, JSON, Ion text, ``key=value`` logs and PartiQL (``c.ssn = '123-45-6789'``,
  ``SET c.card_number = '4111…'``, ``{'ssn': '…'}``) - where ``name`` (bare, ``'quoted'`` or
  ``"quoted"``, the last part of a path) matches a rule: the value is masked by that rule.
* :func:`mask_statement` also covers what a PartiQL statement can say otherwise (``'…' = c.ssn``,
  ``c['ssn'] = …``, ``c.ssn = UPPER('…')``): when a statement names a masked field anywhere but not
  every mention was a ``name <op> value`` pair, every literal of the statement that is not the
  value of a pair with an unmasked name is redacted (``'****'``).

A HASH value already masked (64 hex digits) and a PARTIAL value are left as they are, so that
masking twice gives the same text. :func:`loggable` masks log arguments of any type (no Ion
types needed). :class:`MaskingMetrics` keeps values out of metric dimensions. Nothing here raises
for odd input; the callers still guard it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qldbstream.core.masking import Masker, MaskingRule

__all__ = ["MaskingMetrics", "loggable", "mask_statement", "mask_text", "withhold_records"]

# Possessive quantifiers (``*+``): no backtracking into a literal or a list, so that no text a log
# line may hold (say, a run of quotes after an opening parenthesis) takes exponential time.
_SQ = r"'(?:[^'\\]|''|\\.)*+'"
_DQ = r'"(?:[^"\\]|\\.)*+"'
_BT = r"`[^`]*+`"
_GROUP = rf"(?:{_SQ}|{_DQ}|{_BT}|[^()\[\]'\"`])*+"
_VALUE = (
    rf"{_SQ}|{_DQ}|{_BT}|\({_GROUP}\)|\[{_GROUP}\]"
    r"|[^\s,;(){}\[\]'\"`<>=!:][^\s,;(){}\[\]'\"`=]*+"
)
#: ``name <op> value``; ``name`` is bare, single- or double-quoted (the last part of a path)
_PAIR = re.compile(
    rf"(?P<name>'[^'\\\n]{{1,128}}'|\"[^\"\\\n]{{1,128}}\"|(?<![\w$])[A-Za-z_][\w$]{{0,127}})"
    rf"(?=(?P<op>\s*(?:==?|!=|<>|<=|>=|<|>|:)\s*|\s+(?:NOT\s+)?(?:LIKE|IN)\s+)"
    rf"(?P<value>{_VALUE}))",
    re.IGNORECASE,
)
#: the literals inside a list value or a statement
_LITERAL = re.compile(rf"{_SQ}|{_DQ}|{_BT}|(?<![\w$.])[-+]?\d[\w.+-]*")
#: names a statement may mention: identifiers and quoted names
_NAME = re.compile(r"'[^'\\\n]{1,128}'|\"[^\"\\\n]{1,128}\"|(?<![\w$])[A-Za-z_][\w$]*")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def _unquoted(name: str) -> str:
    return name[1:-1] if name[:1] in ("'", '"') else name


def _mask_scalar_text(masker: Masker, text: str, rule: MaskingRule) -> str:
    from qldbstream.core.masking import MaskingType

    if rule.masking_type is MaskingType.HASH and _HEX64.match(text):
        return text  # already a pseudonym
    if rule.masking_type is MaskingType.REDACT:
        return "****"
    from amazon.ion.core import IonType

    masked = masker._scalar(text, IonType.STRING, rule)
    return masked if isinstance(masked, str) else "****"


def _mask_literal(masker: Masker, literal: str, rule: MaskingRule) -> str:
    """One literal (quoted, backticked or bare) masked by ``rule``, in the same quotes."""
    quote = literal[:1]
    if quote in ("'", '"', "`") and len(literal) >= 2 and literal[-1] == quote:
        inner = literal[1:-1]
        if quote == "'":
            inner = inner.replace("''", "'")
        if quote == "`":  # an Ion literal: mask the text inside its own quotes, if any
            inner = _LITERAL.sub(lambda m: _mask_literal(masker, m.group(0), rule), inner)
            return f"`{inner}`"
        masked = _mask_scalar_text(masker, inner, rule)
        return quote + (masked.replace("'", "''") if quote == "'" else masked) + quote
    return _mask_scalar_text(masker, literal, rule)


def _mask_value(masker: Masker, value: str, rule: MaskingRule) -> str:
    if value[:1] in ("(", "["):  # a list: every literal inside
        return _LITERAL.sub(lambda m: _mask_literal(masker, m.group(0), rule), value)
    return _mask_literal(masker, value, rule)


def _pairs(masker: Masker, text: str) -> tuple[str, int, list[tuple[int, int]]]:
    """``text`` with masked pairs masked; how many; the spans of unmasked pairs' values (safe)."""
    masked_pairs = 0
    safe: list[tuple[int, int]] = []
    out: list[str] = []
    last = 0
    # Matches overlap (a pair's value may be the next pair's name: ``error: ssn=…``); a name
    # inside a value already masked is skipped.
    for m in _PAIR.finditer(text):
        if m.start() < last:
            continue
        rule = masker.rule_for(_unquoted(m.group("name")))
        if rule is None:
            safe.append((m.start("value"), m.end("value")))
            continue
        masked_pairs += 1
        out.append(text[last : m.start("value")])
        out.append(_mask_value(masker, m.group("value"), rule))
        last = m.end("value")
    out.append(text[last:])
    return "".join(out), masked_pairs, safe


#: QLDB stream records (Ion binary) and KPL aggregates quoted whole: base64 (a Kinesis
#: ``GetRecords`` response body that botocore logs at DEBUG) or a ``bytes`` repr
_RECORDS = re.compile(
    r"(?<![A-Za-z0-9+/])(?:4AEA6|84mawg)[A-Za-z0-9+/]*={0,2}"
    r"|b'(?:\\xe0\\x01\\x00\\xea|\\xf3\\x89\\x9a\\xc2)(?:[^'\\]|\\.)*'"
    r'|b"(?:\\xe0\\x01\\x00\\xea|\\xf3\\x89\\x9a\\xc2)(?:[^"\\]|\\.)*"'
)


def withhold_records(text: str) -> str:
    """``text`` with every QLDB record or KPL aggregate it quotes whole (base64 or a ``bytes``
    repr) replaced by ``[record withheld]``: its values cannot be told apart from its bytes."""
    return _RECORDS.sub("[record withheld]", text)


def mask_text(masker: Masker, text: str) -> str:
    """``text`` with the value of every ``name <op> value`` whose name a rule matches masked, and
    every QLDB record it quotes whole withheld (:func:`withhold_records`)."""
    if not masker.rules or not text:
        return text
    return _pairs(masker, withhold_records(text))[0]


def mask_statement(masker: Masker, text: str) -> str:
    """A PartiQL statement with the literals of masked fields masked (see the module's doc)."""
    if not masker.rules or not text:
        return text
    mentions = sum(1 for m in _NAME.finditer(text) if masker.rule_for(_unquoted(m.group(0))))
    if not mentions:
        return text
    # The pairs are found on the original text: every span refers to it.
    _, masked_pairs, safe = _pairs(masker, text)
    if masked_pairs >= mentions:
        return _pairs(masker, text)[0]
    # A masked name is used in a way the pairs do not cover: redact every literal that is neither
    # the value of an unmasked pair nor a struct key.
    out: list[str] = []
    last = 0
    for m in _LITERAL.finditer(text):
        start, end = m.span()
        if any(s <= start and end <= e for s, e in safe) or re.match(r"\s*:", text[end:]):
            continue
        literal = m.group(0)
        quote = literal[:1] if literal[:1] in ("'", '"', "`") else ""
        out.append(text[last:start])
        out.append(f"{quote}****{quote}" if quote else "0")
        last = end
    out.append(text[last:])
    return mask_text(masker, "".join(out))


def loggable(masker: Masker, value: Any, rule: MaskingRule | None = None, depth: int = 0) -> Any:
    """A log argument with masked values: mappings by key, sequences item by item, text by
    :func:`mask_text`; any type (a value that is not Ion is masked as its text)."""
    if depth > 20:
        return "****"
    if isinstance(value, Mapping):
        return {
            k: loggable(masker, v, rule or masker.rule_for(str(k)), depth + 1) for k, v in list(value.items())
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = [loggable(masker, v, rule, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if rule is not None:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            return "****"
        text = getattr(value, "text", None)
        return _mask_scalar_text(masker, text if isinstance(text, str) else str(value), rule)
    if isinstance(value, str):
        return mask_text(masker, value)
    return value


class MaskingMetrics:
    """A metrics backend whose dimension values never carry a masked field's value: a dimension
    named like a masked field is masked by its rule, any other value as text (:func:`mask_text`).
    Everything else (``flush``, ``serve``, ``total``, …) is the backend's."""

    def __init__(self, inner: Any, masker: Masker) -> None:
        self.inner = inner
        self.masker = masker

    def _dimensions(self, dimensions: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, value in dimensions.items():
            try:
                rule = self.masker.rule_for(name)
                text = str(value)
                out[name] = (
                    _mask_scalar_text(self.masker, text, rule) if rule else mask_text(self.masker, text)
                )
            except Exception:  # a metric must never fail, nor leak
                out[name] = "****"
        return out

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        self.inner.incr(name, value, **self._dimensions(dimensions))

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self.inner.gauge(name, value, **self._dimensions(dimensions))

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        self.inner.observe(name, value, **self._dimensions(dimensions))

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built)
            raise AttributeError(name)
        return getattr(self.inner, name)
