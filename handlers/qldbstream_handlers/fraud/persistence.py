"""The fraud handler's state in the store: the shared handler state and each account's, loaded,
refreshed with what other consumers stored, and saved under optimistic concurrency.

:class:`StatePersistence` is a base of :class:`~qldbstream_handlers.fraud.handler.FraudHandler`:
a write that meets a concurrent one merges the stored copy in and tries again (up to
``_MAX_CONFLICTS`` times, then :class:`~qldbstream.api.RetryableError`). The stores themselves and
why writing in ``flush`` is enough are in :mod:`~qldbstream_handlers.fraud.state`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from qldbstream.api import Metrics, RetryableError
from qldbstream_handlers.fraud.state import AccountState, HandlerMeta, StateStore

__all__ = ["StatePersistence"]

_MAX_CONFLICTS = 10
#: state written under optimistic concurrency (a revision per key)
V = TypeVar("V", AccountState, HandlerMeta)


class StatePersistence:
    """Loads and saves the fraud handler's state; the handler provides the store and the caches."""

    name: str
    _metrics: Metrics
    _accounts: OrderedDict[str, AccountState]
    _meta: HandlerMeta | None
    _meta_dirty: bool

    if TYPE_CHECKING:

        @property
        def store(self) -> StateStore: ...

    def _meta_key(self) -> str:
        return f"{self.name}#meta"

    def _account_key(self, account: str) -> str:
        return f"{self.name}#acct#{account}"

    def _meta_pending(self) -> dict[str, int]:
        return self._meta.pending if self._meta is not None else {}

    def _load_meta(self) -> HandlerMeta:
        if self._meta is None:
            stored = self.store.get([self._meta_key()]).get(self._meta_key())
            self._meta = HandlerMeta.from_json(stored[1], stored[0]) if stored else HandlerMeta()
        return self._meta

    def _refresh_meta(self) -> HandlerMeta:
        """The shared handler state, with what other consumers stored since (their shards' progress)."""
        meta = self._load_meta()
        stored = self.store.get([self._meta_key()]).get(self._meta_key())
        if stored is not None and stored[0] != meta.revision:
            meta.merge(HandlerMeta.from_json(stored[1], stored[0]))
            meta.revision = stored[0]
        return meta

    def _refresh_accounts(self, accounts: Sequence[str]) -> None:
        """Merge in what other consumers stored for these accounts (before evaluating them)."""
        if not accounts:
            return
        stored = self.store.get([self._account_key(a) for a in accounts])
        for account in accounts:
            item = stored.get(self._account_key(account))
            state = self._accounts[account]
            if item is not None and item[0] != state.revision:
                state.merge(AccountState.from_json(item[1], item[0]))
                state.revision = item[0]

    def _load_accounts(self, accounts: Iterable[str]) -> None:
        missing = sorted({a for a in accounts if a not in self._accounts})
        if missing:
            stored = self.store.get([self._account_key(a) for a in missing])
            for account in missing:
                item = stored.get(self._account_key(account))
                self._accounts[account] = (
                    AccountState.from_json(item[1], item[0]) if item else AccountState(account)
                )
        for account in accounts:
            self._accounts.move_to_end(account)

    def _save_account(self, state: AccountState) -> None:
        def merged() -> None:
            waiting = [e.time_ms for e in state.pending()]
            if waiting:  # a concurrent writer's events that still wait for the watermark
                meta = self._load_meta()
                earliest = min([*waiting, meta.pending.get(state.account_id, waiting[0])])
                meta.pending[state.account_id] = earliest
                self._meta_dirty = True

        self._save(
            self._account_key(state.account_id), state, merged, f"fraud state for account {state.account_id}"
        )
        state.dirty = False

    def _save_meta(self, meta: HandlerMeta) -> None:
        self._save(self._meta_key(), meta, lambda: None, "fraud handler state")
        self._meta_dirty = False

    def _save(self, key: str, value: V, merged: Callable[[], None], what: str) -> None:
        """Write ``value`` at its revision; on a concurrent write, merge the stored copy in and retry."""
        for _ in range(_MAX_CONFLICTS):
            revision = self.store.put(key, value.to_json(), value.revision)
            if revision is not None:
                value.revision = revision
                return
            self._metrics.incr("fraud_state_conflicts")
            stored = self.store.get([key]).get(key)
            if stored is None:
                value.revision = 0
                continue
            value.merge(type(value).from_json(stored[1], stored[0]))
            value.revision = stored[0]
            merged()
        raise RetryableError(f"{what}: too many concurrent writers")
