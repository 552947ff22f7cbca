"""The audit-log handler: one JSON line per verified revision, appended to a file.

Every revision that passed verification is written with its identity (table, document id,
version, operation), its commit (txId, txTime, block) and its revision hash, so an auditor can
later match each line against the ledger. Lines are buffered per batch and written and fsynced
in ``flush`` - before the checkpoint moves - so a line is never lost; a redelivery after a crash
between the write and the checkpoint can repeat a line, which carries its ``key`` for readers to
de-duplicate.

Settings (``QLDBSTREAM_HANDLER_AUDIT__<KEY>``):

=============  ===================================================  ==========================
``path``       the JSON Lines file to append to                      ``qldbstream-audit.jsonl``
``tables``     comma-separated table names to keep (empty: all)      empty
``data``       ``true`` to include the document's data as Ion text   ``false``
=============  ===================================================  ==========================

Written on :class:`~qldbstream.api.Router`: one revision route (filtered by ``tables``) that
buffers the line; ``flush`` writes the buffer.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qldbstream.api import ConfigurationError, HandlerContext, RevisionDetails, Router, operation_of

__all__ = ["AuditLogHandler"]


class AuditLogHandler(Router):
    """Appends one JSON line per verified revision of the chosen tables (see the module)."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        super().__init__("audit")
        own = dict(settings or {})
        unknown = set(own) - {"path", "tables", "data"}
        if unknown:
            raise ConfigurationError(
                f"audit handler: unknown settings {sorted(unknown)} (known: path, tables, data)"
            )
        self.path = Path(own.get("path") or "qldbstream-audit.jsonl")
        tables = [t.strip() for t in own.get("tables", "").split(",") if t.strip()]
        self.tables = frozenset(tables) or None
        flag = own.get("data", "false").strip().lower()
        if flag not in ("true", "false"):
            raise ConfigurationError(f"audit handler: data must be true or false, not {flag!r}")
        self.include_data = flag == "true"
        #: key -> line; keyed so that a batch redelivered after a failed flush is not written twice
        self._pending: dict[str, str] = {}
        self.add_revision_handler(
            self.on_revision, table=sorted(self.tables) if self.tables else None, name="audit-line"
        )

    def on_revision(self, revision: RevisionDetails, ctx: HandlerContext) -> None:
        """Buffer the revision's line (written in :meth:`flush`)."""
        line = self._line(revision)
        self._pending[line["key"]] = json.dumps(line, sort_keys=True)

    def _line(self, r: RevisionDetails) -> dict[str, Any]:
        line: dict[str, Any] = {
            "key": f"{r.document_id}#{r.version}",
            "ledgerStreamArn": r.stream_arn,
            "table": r.table_name,
            "documentId": r.document_id,
            "version": r.version,
            "operation": operation_of(r),
            "txId": r.tx_id,
            "txTime": r.tx_time.isoformat(),
            "blockSequenceNo": r.block_address.sequence_no,
            "strandId": r.block_address.strand_id,
            "revisionHash": base64.b64encode(r.hash).decode(),
            "verified": True,
        }
        if self.include_data and r.data is not None:
            from amazon.ion import simpleion

            line["data"] = simpleion.dumps(r.data, binary=False).removeprefix("$ion_1_0 ")
        return line

    def flush(self, ctx: HandlerContext) -> None:
        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(self._pending.values()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._pending.clear()
