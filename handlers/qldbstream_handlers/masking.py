"""Masking for one handler, today: wrap any handler so that it only ever sees masked revisions.

The pipeline-wide stage (every handler, the DLQ and the logs; ``docs/handlers/masking-core.diff``)
needs a core change; until it lands, or when only some handlers must see masked data (a
replication target in another account, an analytics export, the audit log with ``data = true``),
wrap them::

    from qldbstream_handlers.audit import AuditLogHandler
    from qldbstream_handlers.masking import MaskingHandler

    audit = MaskingHandler.from_settings(AuditLogHandler({"data": "true"}), {"hash_key": secret})

The wrapped handler receives masked copies (:func:`qldbstream.core.masking.masked_copy`): ``.data``
and ``.ion`` are masked, ``.raw`` is the original, verified bytes (a handler must not decode it
itself). Its name, its retry/poison error classes and its de-duplication keys are unchanged.

Settings (``rules``, ``hash_key``): see :func:`parse_masking_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qldbstream.api import ConfigurationError, Handler, HandlerContext, JournalRecord, SetupContext
from qldbstream.api.masking import Masker, masked_copy, masking_from_settings

__all__ = ["MaskingHandler", "parse_masking_settings"]

_KEYS = frozenset({"rules", "hash_key"})


def parse_masking_settings(settings: Mapping[str, str]) -> Masker:
    """``rules`` (the seed's JSON or ``pattern=HASH; pattern=PARTIAL:4; pattern=REDACT``; default:
    the seed's ssn/card rules) and ``hash_key`` (the HMAC secret, at least 16 bytes)."""
    own = {k.lower(): v for k, v in settings.items()}
    unknown = sorted(set(own) - _KEYS)
    if unknown:
        raise ConfigurationError(f"masking: unknown settings {unknown} (known: {', '.join(sorted(_KEYS))})")
    masker, _ = masking_from_settings(own.get("rules"), own.get("hash_key"))
    return masker


class MaskingHandler(Handler):
    """``inner``, fed masked copies of revisions."""

    def __init__(self, inner: Handler, masker: Masker) -> None:
        self.inner = inner
        self.masker = masker
        self.name = inner.name
        self.retryable_errors: tuple[type[BaseException], ...] = getattr(inner, "retryable_errors", ())
        self.poison_errors: tuple[type[BaseException], ...] = getattr(inner, "poison_errors", ())
        #: id(record) -> (record, masked copy): ``wants`` and ``handle_batch`` mask each record once
        self._views: dict[int, tuple[JournalRecord, Any]] = {}

    @classmethod
    def from_settings(cls, inner: Handler, settings: Mapping[str, str]) -> MaskingHandler:
        return cls(inner, parse_masking_settings(settings))

    def setup(self, ctx: SetupContext) -> None:
        self.inner.setup(ctx)

    def wants(self, record: JournalRecord) -> bool:
        # routing looks at identity (table, operation) and may look at data: give it the masked view
        return self.inner.wants(self._view(record))

    def handle_batch(self, records: Sequence[JournalRecord], ctx: HandlerContext) -> None:
        self.inner.handle_batch([self._view(r) for r in records], ctx)

    def flush(self, ctx: HandlerContext) -> None:
        self._views.clear()
        self.inner.flush(ctx)

    def shard_released(self, shard_id: str) -> None:
        self.inner.shard_released(shard_id)

    def close(self) -> None:
        self.inner.close()

    def _view(self, record: JournalRecord) -> Any:
        cached = self._views.get(id(record))
        if cached is not None and cached[0] is record:
            return cached[1]
        if len(self._views) > 10_000:  # a runtime that never flushes must not grow without bound
            self._views.clear()
        view = masked_copy(record, self.masker)
        self._views[id(record)] = (record, view)
        return view

    def __repr__(self) -> str:
        return f"MaskingHandler({self.inner!r}, {self.masker!r})"
