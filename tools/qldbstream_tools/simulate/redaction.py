"""Which revisions ``redact_revision`` accepts, as the bank's transactions commit.

QLDB redacts only a *superseded* revision (never a document's latest one) that still has data
(not a delete) and is not already redacted. Customers' revisions are kept apart: that is where
the PII is, so random redactions prefer them.
"""

from __future__ import annotations

import random

from qldbstream.core.errors import ConfigurationError
from qldbstream_tools.simulate.model import RedactionRequest

__all__ = ["RedactionPool"]


class RedactionPool:
    """The redactable revisions, updated as revisions are superseded and redacted."""

    def __init__(self, ops: dict[tuple[str, int], str]) -> None:
        #: (documentId, version) -> op of every committed revision (shared with the bank).
        self.ops = ops
        self._pools: dict[bool, dict[tuple[str, int], str]] = {True: {}, False: {}}
        self.redacted: set[tuple[str, int]] = set()

    def superseded(self, table: str, document_id: str, version: int) -> None:
        """Revision ``version`` is no longer the latest: redactable unless it is a delete."""
        if self.ops[(document_id, version)] != "delete":
            self._pools[table == "Customers"][(document_id, version)] = table

    def choose(self, rng: random.Random) -> RedactionRequest | None:
        """A random redactable revision (a customer's 70% of the time, when there is one)."""
        customers, others = self._pools[True], self._pools[False]
        pool = customers if customers and (not others or rng.random() < 0.7) else others
        if not pool:
            return None
        document_id, version = rng.choice(sorted(pool))
        return RedactionRequest(pool[(document_id, version)], document_id, version)

    def check(self, document_id: str, version: int) -> RedactionRequest:
        """The request for a named revision; :class:`ConfigurationError` when QLDB would refuse it."""
        for pool in self._pools.values():
            table = pool.get((document_id, version))
            if table is not None:
                return RedactionRequest(table, document_id, version)
        if (document_id, version) not in self.ops:
            raise ConfigurationError(f"cannot redact {document_id} version {version}: no such revision")
        raise ConfigurationError(
            f"cannot redact {document_id} version {version}: QLDB redacts only superseded revisions "
            "with data that are not already redacted"
        )

    def take(self, request: RedactionRequest) -> None:
        """``request`` is committed: the revision is redacted and no longer redactable."""
        key = (request.document_id, request.version)
        self.redacted.add(key)
        for pool in self._pools.values():
            pool.pop(key, None)
