"""What the simulated bank does: how many transactions, which kinds, how often, from when."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal

from qldbstream.core.errors import ConfigurationError

__all__ = ["DEFAULT_START", "TABLES", "Workload", "WorkloadMix"]

TABLES = ("Customers", "Accounts", "Transactions")
#: The default first statement time: output never depends on the wall clock.
DEFAULT_START = datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    """Relative weights of the transaction kinds (any non-negative numbers; see :mod:`.bank`)."""

    open_account: float = 6.0
    card_payment: float = 42.0
    deposit: float = 12.0
    transfer: float = 10.0
    small_burst: float = 1.0
    high_value: float = 3.0
    customer_update: float = 7.0
    account_review: float = 4.0
    delete: float = 4.0
    redaction: float = 1.0

    def weights(self) -> dict[str, float]:
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        if any(w < 0 for w in out.values()) or not any(out.values()):
            raise ConfigurationError("workload mix weights must be non-negative and not all zero")
        return out


@dataclass(frozen=True, slots=True)
class Workload:
    """What the bank does. ``transactions`` counts the bank's QLDB transactions (one block each)."""

    transactions: int = 100
    mix: WorkloadMix = field(default_factory=WorkloadMix)
    #: Exactly this many deletes / redactions instead of the mix's weight (``None``: use the mix).
    deletes: int | None = None
    redactions: int | None = None
    #: Extra redactions of these ``(documentId, version)`` revisions, committed after the workload.
    redact: tuple[tuple[str, int], ...] = ()
    start_time: datetime = DEFAULT_START
    mean_gap_ms: int = 1500
    #: Amounts below this are "small" (only planted bursts have them).
    small_amount_limit: Decimal = Decimal("10.00")
    high_value_min: Decimal = Decimal("10000.00")
    burst_size: tuple[int, int] = (5, 8)
    burst_window_ms: int = 240_000
    #: Probability that a block also records an internal system revision (hash only).
    system_entry_rate: float = 0.03
    #: Start with CREATE TABLE / CREATE INDEX blocks (system revisions only, no REVISION_DETAILS).
    ddl: bool = True

    def validate(self) -> None:
        if self.transactions < 1:
            raise ConfigurationError(f"transactions must be at least 1, not {self.transactions}")
        for name in ("deletes", "redactions"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= self.transactions:
                raise ConfigurationError(f"{name} must be between 0 and the number of transactions")
        if not 1 <= self.burst_size[0] <= self.burst_size[1]:
            raise ConfigurationError(f"burst_size must be (min, max) with 1 <= min <= max: {self.burst_size}")
        if not 0 <= self.system_entry_rate <= 1:
            raise ConfigurationError("system_entry_rate must be between 0 and 1")
        if self.mean_gap_ms < 1:
            raise ConfigurationError("mean_gap_ms must be at least 1")
        self.mix.weights()
