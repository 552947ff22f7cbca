"""A third-party qldbstream plugin, complete: settings, validation, a router, a buffered sink.

Installed with ``pip install ./examples/large-transfers`` it registers the entry point
``large-transfers``; activate it with::

    QLDBSTREAM_HANDLERS=large-transfers
    QLDBSTREAM_HANDLER_LARGE_TRANSFERS__THRESHOLD=10000
    QLDBSTREAM_HANDLER_LARGE_TRANSFERS__PATH=large-transfers.jsonl

Every new ``Transactions`` document whose ``amount`` is at or above the threshold becomes one
JSON line. Lines are buffered per batch and written in ``flush`` - before the checkpoint moves -
keyed by document id so a redelivered batch is never written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path

from qldbstream import Router
from qldbstream.api import ConfigurationError, HandlerContext, RevisionDetails

__all__ = ["LargeTransfers", "create"]


class LargeTransfers(Router):
    """A Router with state: the routes are registered in ``__init__``."""

    def __init__(self, threshold: Decimal, path: Path) -> None:
        super().__init__("large-transfers")
        self.threshold = threshold
        self.path = path
        self._pending: dict[str, str] = {}
        self.add_revision_handler(self.on_transaction, table="Transactions", operation="insert")

    def on_transaction(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        data = revision.data
        amount = data.get("amount")
        if amount is None or Decimal(str(amount)) < self.threshold:
            return
        line = {
            "documentId": revision.document_id,
            "accountId": str(data.get("accountId")),
            "amount": str(amount),
            "currency": str(data.get("currency")),
            "txTime": revision.tx_time.isoformat(),
            "late": ctx.late,
        }
        self._pending[line["documentId"]] = json.dumps(line, sort_keys=True)

    def flush(self, ctx: HandlerContext) -> None:
        if not self._pending:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(self._pending.values()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._pending.clear()


def create(settings: Mapping[str, str]) -> LargeTransfers:
    """The entry point: validate the plugin's own settings, fail start-up with one clear line."""
    unknown = set(settings) - {"threshold", "path"}
    if unknown:
        raise ConfigurationError(
            f"large-transfers: unknown settings {sorted(unknown)} (known: threshold, path)"
        )
    try:
        threshold = Decimal(settings.get("threshold", "10000"))
    except InvalidOperation:
        raise ConfigurationError(
            f"large-transfers: threshold {settings['threshold']!r} is not a number"
        ) from None
    return LargeTransfers(threshold, Path(settings.get("path", "large-transfers.jsonl")))
